//! Membership: JoinGroup, SyncGroup, Heartbeat and LeaveGroup, the rebalance they
//! drive, and the timers (sessions, join and sync phases, the initial delay, pending
//! member ids) that move a group on when members go quiet.

use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use glommio::channels::local_channel::{self, LocalSender};
use tracing::{debug, info, warn};

use super::state::*;
use super::*;

impl<H: CoordinatorHost> Coordinator<H> {
    // ---- membership ----

    pub(super) async fn join(&self, host: &Rc<H>, args: JoinArgs) -> JoinOutcome {
        let failed = |error| JoinOutcome::failed(error, &args.member_id);
        if args.group.is_empty() {
            return failed(code::INVALID_GROUP_ID);
        }
        if host.is_stopping() {
            return failed(code::NOT_COORDINATOR);
        }
        if let Err(error) = self.check_serving(host, &args.group) {
            return failed(error.code());
        }
        let limits = &host.group_config();
        if args.session_timeout_ms < limits.min_session_timeout_ms
            || args.session_timeout_ms > limits.max_session_timeout_ms
        {
            return failed(code::INVALID_SESSION_TIMEOUT);
        }
        let now = host.clock().monotonic_ms();
        let wall = host.clock().wall_ms();
        let (sender, receiver) = local_channel::new_bounded(1);
        let mut writes = Vec::new();
        {
            let mut groups = self.groups.borrow_mut();
            if !args.member_id.is_empty() && !groups.contains_key(&args.group) {
                return failed(code::UNKNOWN_MEMBER_ID);
            }
            let group =
                groups.entry(args.group.clone()).or_insert_with(|| Group::new(&args.group, wall));
            if group.state == State::Dead {
                return failed(code::COORDINATOR_NOT_AVAILABLE);
            }
            if !group.supports(&args.protocol_type, &args.protocols) {
                return failed(code::INCONSISTENT_GROUP_PROTOCOL);
            }
            let answer = if args.member_id.is_empty() {
                self.join_new(host, group, &args, sender, now, wall)
            } else {
                self.join_known(host, group, &args, sender, now, wall)
            };
            if let Some(answer) = answer {
                return answer;
            }
            self.maybe_complete_join(host, group, now, wall, &mut writes);
        }
        self.write_detached(host, &args.group, writes);
        receiver.recv().await.unwrap_or_else(|| failed(code::COORDINATOR_NOT_AVAILABLE))
    }

    /// A join without a member id. `Some`: answered now; `None`: parked on `sender`.
    fn join_new(
        &self,
        host: &H,
        group: &mut Group,
        args: &JoinArgs,
        sender: LocalSender<JoinOutcome>,
        now: u64,
        wall: i64,
    ) -> Option<JoinOutcome> {
        if let Some(instance) = &args.instance_id {
            let member_id = self.new_member_id(instance);
            if let Some(old_id) = group.instances.get(instance).cloned() {
                return self
                    .replace_static(host, group, &old_id, member_id, args, sender, now, wall);
            }
            return self.add_and_park(host, group, member_id, args, sender, now, wall);
        }
        let prefix = if args.client.id.is_empty() { "member" } else { args.client.id.as_str() };
        let member_id = self.new_member_id(prefix);
        if args.require_known_member_id {
            let deadline = now + args.session_timeout_ms as u64;
            group.pending.insert(member_id.clone(), deadline);
            self.schedule(deadline, &group.id, TimerKind::Pending(member_id.clone()));
            return Some(JoinOutcome::failed(code::MEMBER_ID_REQUIRED, &member_id));
        }
        self.add_and_park(host, group, member_id, args, sender, now, wall)
    }

    /// A join with a member id.
    fn join_known(
        &self,
        host: &H,
        group: &mut Group,
        args: &JoinArgs,
        sender: LocalSender<JoinOutcome>,
        now: u64,
        wall: i64,
    ) -> Option<JoinOutcome> {
        let member_id = args.member_id.clone();
        if group.pending.remove(&member_id).is_some() {
            return self.add_and_park(host, group, member_id, args, sender, now, wall);
        }
        if let Some(error) = fenced_or_unknown(group, &member_id, args.instance_id.as_deref()) {
            return Some(JoinOutcome::failed(error, &member_id));
        }
        let is_leader = group.is_leader(&member_id);
        let Some(member) = group.members.get_mut(&member_id) else {
            return Some(JoinOutcome::failed(code::UNKNOWN_MEMBER_ID, &member_id));
        };
        member.deadline_ms = now + member.session_timeout_ms as u64;
        let unchanged = member.same_protocols(&args.protocols);
        match group.state {
            State::PreparingRebalance => {
                update_member(member, args);
                if let Some(previous) = member.join.replace(sender) {
                    let _ = previous
                        .try_send(JoinOutcome::failed(code::REBALANCE_IN_PROGRESS, &member_id));
                }
                None
            }
            // The member lost its JoinGroup answer: send it again.
            State::CompletingRebalance if unchanged => Some(group.join_outcome(&member_id, false)),
            // A follower with nothing new gets the current generation; a leader rejoining
            // (or anyone with new metadata) starts a rebalance.
            State::Stable if unchanged && !is_leader => Some(group.join_outcome(&member_id, false)),
            State::CompletingRebalance | State::Stable => {
                update_member(member, args);
                member.join = Some(sender);
                self.prepare_rebalance(host, group, now, wall, "member rejoined with new metadata");
                None
            }
            State::Empty | State::Dead => {
                Some(JoinOutcome::failed(code::UNKNOWN_MEMBER_ID, &member_id))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_and_park(
        &self,
        host: &H,
        group: &mut Group,
        member_id: String,
        args: &JoinArgs,
        sender: LocalSender<JoinOutcome>,
        now: u64,
        wall: i64,
    ) -> Option<JoinOutcome> {
        if group.members.len() >= host.group_config().max_size {
            return Some(JoinOutcome::failed(code::GROUP_MAX_SIZE_REACHED, &member_id));
        }
        if group.members.is_empty() {
            group.protocol_type = Some(args.protocol_type.clone());
        }
        let deadline_ms = now + args.session_timeout_ms as u64;
        let member = Member {
            id: member_id.clone(),
            instance_id: args.instance_id.clone(),
            client_id: args.client.id.clone(),
            client_host: args.client.host.clone(),
            session_timeout_ms: args.session_timeout_ms,
            rebalance_timeout_ms: args.rebalance_timeout_ms,
            protocol_type: args.protocol_type.clone(),
            protocols: args.protocols.clone(),
            assignment: Bytes::new(),
            join: Some(sender),
            sync: None,
            deadline_ms,
        };
        if let Some(instance) = &args.instance_id {
            group.instances.insert(instance.clone(), member_id.clone());
        }
        group.members.insert(member_id.clone(), member);
        group.new_member_added = true;
        self.schedule(deadline_ms, &group.id, TimerKind::Session(member_id.clone()));
        debug!(group = %group.id, member = %member_id, "member joins");
        match group.state {
            State::Empty | State::Stable | State::CompletingRebalance => {
                self.prepare_rebalance(host, group, now, wall, "member joined");
            }
            State::PreparingRebalance | State::Dead => {}
        }
        None
    }

    /// A static member came back with a new member id (KIP-345): the old id is fenced, the
    /// member keeps its place and, when nothing changed, a stable group does not rebalance.
    #[allow(clippy::too_many_arguments)]
    fn replace_static(
        &self,
        host: &H,
        group: &mut Group,
        old_id: &str,
        new_id: String,
        args: &JoinArgs,
        sender: LocalSender<JoinOutcome>,
        now: u64,
        wall: i64,
    ) -> Option<JoinOutcome> {
        let Some(mut member) = group.members.shift_remove(old_id) else {
            return self.add_and_park(host, group, new_id, args, sender, now, wall);
        };
        if let Some(join) = member.join.take() {
            let _ = join.try_send(JoinOutcome::failed(code::FENCED_INSTANCE_ID, old_id));
        }
        if let Some(sync) = member.sync.take() {
            let _ = sync.try_send(SyncOutcome::failed(code::FENCED_INSTANCE_ID));
        }
        let unchanged = member.same_protocols(&args.protocols);
        member.id = new_id.clone();
        member.client_id = args.client.id.clone();
        member.client_host = args.client.host.clone();
        member.session_timeout_ms = args.session_timeout_ms;
        member.rebalance_timeout_ms = args.rebalance_timeout_ms;
        member.deadline_ms = now + args.session_timeout_ms as u64;
        if let Some(instance) = &args.instance_id {
            group.instances.insert(instance.clone(), new_id.clone());
        }
        let was_leader = group.is_leader(old_id);
        if was_leader {
            group.leader = Some(new_id.clone());
        }
        self.schedule(member.deadline_ms, &group.id, TimerKind::Session(new_id.clone()));
        info!(group = %group.id, old = old_id, new = %new_id, "static member replaced");
        match group.state {
            State::Stable if unchanged => {
                group.members.insert(new_id.clone(), member);
                // The stored record names the old member id; the next store replaces it.
                Some(group.join_outcome(&new_id, was_leader))
            }
            State::PreparingRebalance => {
                update_member(&mut member, args);
                member.join = Some(sender);
                group.members.insert(new_id, member);
                None
            }
            _ => {
                update_member(&mut member, args);
                member.join = Some(sender);
                group.members.insert(new_id, member);
                self.prepare_rebalance(host, group, now, wall, "static member rejoined");
                None
            }
        }
    }

    /// Starts a rebalance: members must rejoin within the rebalance timeout. A group
    /// leaving Empty first waits `group.initial.rebalance.delay.ms` for more members.
    pub(super) fn prepare_rebalance(
        &self,
        host: &H,
        group: &mut Group,
        now: u64,
        wall: i64,
        why: &str,
    ) {
        if group.state == State::CompletingRebalance {
            for member in group.members.values_mut() {
                member.assignment = Bytes::new();
                if let Some(sync) = member.sync.take() {
                    let _ = sync.try_send(SyncOutcome::failed(code::REBALANCE_IN_PROGRESS));
                }
            }
        }
        let was_empty = group.state == State::Empty;
        group.set_state(State::PreparingRebalance, wall);
        group.rebalance += 1;
        let rebalance_timeout = group.max_rebalance_timeout_ms();
        let delay = host.group_config().initial_rebalance_delay_ms;
        let wait = if was_empty && delay > 0 {
            let first = delay.min(rebalance_timeout);
            group.initial_delay_left_ms = Some(rebalance_timeout.saturating_sub(first));
            group.new_member_added = false;
            first
        } else {
            group.initial_delay_left_ms = None;
            rebalance_timeout
        };
        info!(group = %group.id, generation = group.generation, reason = why, "preparing rebalance");
        self.schedule(now + wait, &group.id, TimerKind::Join(group.rebalance));
    }

    /// Completes the join phase when every member has rejoined.
    pub(super) fn maybe_complete_join(
        &self,
        host: &H,
        group: &mut Group,
        now: u64,
        wall: i64,
        writes: &mut Vec<Write>,
    ) {
        if group.state == State::PreparingRebalance
            && group.initial_delay_left_ms.is_none()
            && group.all_joined()
        {
            self.complete_join(host, group, now, wall, writes);
        }
    }

    /// Ends the join phase: members that did not rejoin are dropped, the generation moves
    /// on, and every parked JoinGroup is answered (the leader with all members).
    fn complete_join(
        &self,
        _host: &H,
        group: &mut Group,
        now: u64,
        wall: i64,
        writes: &mut Vec<Write>,
    ) {
        let gone: Vec<String> =
            group.members.values().filter(|m| m.join.is_none()).map(|m| m.id.clone()).collect();
        for member_id in gone {
            info!(group = %group.id, member = %member_id, "member did not rejoin in time");
            remove_member_only(group, &member_id);
        }
        group.initial_delay_left_ms = None;
        group.generation += 1;
        if group.members.is_empty() {
            group.protocol = None;
            group.leader = None;
            group.set_state(State::Empty, wall);
            info!(group = %group.id, generation = group.generation, "group is empty");
            writes.push(group_write(&group.id, Some(&group.value())));
            group.stored = true;
            return;
        }
        group.protocol = group.select_protocol();
        if !group.leader.as_ref().is_some_and(|leader| group.members.contains_key(leader)) {
            group.leader = group.members.keys().next().cloned();
        }
        group.set_state(State::CompletingRebalance, wall);
        info!(
            group = %group.id,
            generation = group.generation,
            members = group.members.len(),
            protocol = group.protocol.as_deref().unwrap_or(""),
            "rebalance: join complete"
        );
        let ids: Vec<String> = group.members.keys().cloned().collect();
        for id in ids {
            let outcome = group.join_outcome(&id, false);
            if let Some(member) = group.members.get_mut(&id) {
                member.deadline_ms = now + member.session_timeout_ms as u64;
                if let Some(join) = member.join.take() {
                    let _ = join.try_send(outcome);
                }
            }
        }
        let timeout = group.max_rebalance_timeout_ms();
        self.schedule(now + timeout, &group.id, TimerKind::Sync(group.rebalance));
    }

    /// Removes a member (left, session expired) and moves the group on.
    #[allow(clippy::too_many_arguments)]
    fn remove_member(
        &self,
        host: &H,
        group: &mut Group,
        member_id: &str,
        now: u64,
        wall: i64,
        writes: &mut Vec<Write>,
        why: &str,
    ) {
        if let Some(mut member) = remove_member_only(group, member_id) {
            if let Some(join) = member.join.take() {
                let _ = join.try_send(JoinOutcome::failed(code::UNKNOWN_MEMBER_ID, member_id));
            }
            if let Some(sync) = member.sync.take() {
                let _ = sync.try_send(SyncOutcome::failed(code::UNKNOWN_MEMBER_ID));
            }
        }
        info!(group = %group.id, member = member_id, reason = why, "member removed");
        match group.state {
            State::Stable | State::CompletingRebalance => {
                self.prepare_rebalance(host, group, now, wall, why);
                self.maybe_complete_join(host, group, now, wall, writes);
            }
            State::PreparingRebalance => self.maybe_complete_join(host, group, now, wall, writes),
            State::Empty | State::Dead => {}
        }
    }

    pub(super) async fn sync(&self, host: &Rc<H>, args: SyncArgs) -> SyncOutcome {
        if args.group.is_empty() {
            return SyncOutcome::failed(code::INVALID_GROUP_ID);
        }
        if host.is_stopping() {
            return SyncOutcome::failed(code::NOT_COORDINATOR);
        }
        if let Err(error) = self.check_serving(host, &args.group) {
            return SyncOutcome::failed(error.code());
        }
        let now = host.clock().monotonic_ms();
        let (sender, receiver) = local_channel::new_bounded(1);
        let store = {
            let mut groups = self.groups.borrow_mut();
            let Some(group) = groups.get_mut(&args.group) else {
                return SyncOutcome::failed(code::UNKNOWN_MEMBER_ID);
            };
            if let Some(error) =
                fenced_or_unknown(group, &args.member_id, args.instance_id.as_deref())
            {
                return SyncOutcome::failed(error);
            }
            if args.generation != group.generation {
                return SyncOutcome::failed(code::ILLEGAL_GENERATION);
            }
            if args.protocol_type.as_ref().is_some_and(|t| Some(t) != group.protocol_type.as_ref())
                || args.protocol.as_ref().is_some_and(|p| Some(p) != group.protocol.as_ref())
            {
                return SyncOutcome::failed(code::INCONSISTENT_GROUP_PROTOCOL);
            }
            let is_leader = group.is_leader(&args.member_id);
            let (protocol_type, protocol) = (group.protocol_type.clone(), group.protocol.clone());
            let Some(member) = group.members.get_mut(&args.member_id) else {
                return SyncOutcome::failed(code::UNKNOWN_MEMBER_ID);
            };
            member.deadline_ms = now + member.session_timeout_ms as u64;
            match group.state {
                State::Empty | State::Dead => return SyncOutcome::failed(code::UNKNOWN_MEMBER_ID),
                State::PreparingRebalance => {
                    return SyncOutcome::failed(code::REBALANCE_IN_PROGRESS)
                }
                State::Stable => {
                    return SyncOutcome {
                        error: code::NONE,
                        protocol_type,
                        protocol,
                        assignment: member.assignment.clone(),
                    }
                }
                State::CompletingRebalance => {
                    member.sync = Some(sender);
                }
            }
            if is_leader {
                let assignments: HashMap<String, Bytes> = args.assignments.into_iter().collect();
                let mut value = group.value();
                for stored in &mut value.members {
                    stored.assignment =
                        assignments.get(&stored.member_id).cloned().unwrap_or_default();
                }
                Some((group.generation, assignments, value))
            } else {
                None
            }
        };
        if let Some((generation, assignments, value)) = store {
            let written =
                append_group::<H>(host, &args.group, vec![group_write(&args.group, Some(&value))])
                    .await;
            let now = host.clock().monotonic_ms();
            let wall = host.clock().wall_ms();
            let mut groups = self.groups.borrow_mut();
            if let Some(group) = groups.get_mut(&args.group) {
                if group.generation == generation && group.state == State::CompletingRebalance {
                    match written {
                        Ok(()) => {
                            group.stored = true;
                            group.set_state(State::Stable, wall);
                            let (protocol_type, protocol) =
                                (group.protocol_type.clone(), group.protocol.clone());
                            for member in group.members.values_mut() {
                                member.assignment =
                                    assignments.get(&member.id).cloned().unwrap_or_default();
                                if let Some(sync) = member.sync.take() {
                                    let _ = sync.try_send(SyncOutcome {
                                        error: code::NONE,
                                        protocol_type: protocol_type.clone(),
                                        protocol: protocol.clone(),
                                        assignment: member.assignment.clone(),
                                    });
                                }
                            }
                            info!(group = %group.id, generation, "group is stable");
                        }
                        Err(error) => {
                            warn!(group = %group.id, %error.message, "storing the assignment failed");
                            for member in group.members.values_mut() {
                                if let Some(sync) = member.sync.take() {
                                    let _ = sync.try_send(SyncOutcome::failed(
                                        code::COORDINATOR_NOT_AVAILABLE,
                                    ));
                                }
                            }
                            self.prepare_rebalance(host, group, now, wall, "store failed");
                        }
                    }
                }
            }
        }
        receiver.recv().await.unwrap_or_else(|| SyncOutcome::failed(code::REBALANCE_IN_PROGRESS))
    }

    pub(super) fn heartbeat(&self, host: &H, args: &HeartbeatArgs) -> i16 {
        if args.group.is_empty() {
            return code::INVALID_GROUP_ID;
        }
        if let Err(error) = self.check_serving(host, &args.group) {
            return error.code();
        }
        let now = host.clock().monotonic_ms();
        let mut groups = self.groups.borrow_mut();
        let Some(group) = groups.get_mut(&args.group) else { return code::UNKNOWN_MEMBER_ID };
        if let Some(error) = fenced_or_unknown(group, &args.member_id, args.instance_id.as_deref())
        {
            return error;
        }
        if args.generation != group.generation {
            return code::ILLEGAL_GENERATION;
        }
        let state = group.state;
        if let Some(member) = group.members.get_mut(&args.member_id) {
            member.deadline_ms = now + member.session_timeout_ms as u64;
        }
        match state {
            State::Empty | State::Dead => code::UNKNOWN_MEMBER_ID,
            State::PreparingRebalance => code::REBALANCE_IN_PROGRESS,
            State::CompletingRebalance | State::Stable => code::NONE,
        }
    }

    pub(super) fn leave(&self, host: &Rc<H>, group_id: &str, leaving: &[Leaving]) -> LeaveOutcome {
        if group_id.is_empty() {
            return LeaveOutcome { error: code::INVALID_GROUP_ID, members: Vec::new() };
        }
        if let Err(error) = self.check_serving(host, group_id) {
            return LeaveOutcome { error: error.code(), members: Vec::new() };
        }
        let now = host.clock().monotonic_ms();
        let wall = host.clock().wall_ms();
        let mut writes = Vec::new();
        let mut results = Vec::with_capacity(leaving.len());
        {
            let mut groups = self.groups.borrow_mut();
            let mut group = groups.get_mut(group_id);
            for one in leaving {
                let error = match group.as_deref_mut() {
                    None => code::UNKNOWN_MEMBER_ID,
                    Some(group) => self.leave_one(host, group, one, now, wall, &mut writes),
                };
                results.push((one.member_id.clone(), one.instance_id.clone(), error));
            }
        }
        self.write_detached(host, group_id, writes);
        LeaveOutcome { error: code::NONE, members: results }
    }

    fn leave_one(
        &self,
        host: &H,
        group: &mut Group,
        one: &Leaving,
        now: u64,
        wall: i64,
        writes: &mut Vec<Write>,
    ) -> i16 {
        let member_id = match (&one.instance_id, one.member_id.is_empty()) {
            (Some(instance), true) => match group.instances.get(instance) {
                Some(id) => id.clone(),
                None => return code::UNKNOWN_MEMBER_ID,
            },
            _ => one.member_id.clone(),
        };
        if group.pending.remove(&member_id).is_some() {
            return code::NONE;
        }
        if let Some(error) = fenced_or_unknown(group, &member_id, one.instance_id.as_deref()) {
            return error;
        }
        self.remove_member(host, group, &member_id, now, wall, writes, "member left");
        code::NONE
    }

    /// A timer fired.
    pub async fn on_timer(&self, host: &Rc<H>, timer: GroupTimer) {
        let now = host.clock().monotonic_ms();
        let wall = host.clock().wall_ms();
        let mut writes = Vec::new();
        {
            let mut groups = self.groups.borrow_mut();
            let Some(group) = groups.get_mut(&timer.group) else { return };
            match timer.kind {
                TimerKind::Session(member_id) => {
                    let Some(member) = group.members.get(&member_id) else { return };
                    // Parked in a rebalance, a member is alive; its session restarts
                    // when the rebalance answers it.
                    let rearm = if member.join.is_some() || member.sync.is_some() {
                        Some(now + member.session_timeout_ms as u64)
                    } else if member.deadline_ms > now {
                        Some(member.deadline_ms)
                    } else {
                        None
                    };
                    match rearm {
                        Some(at) => self.schedule(at, &group.id, TimerKind::Session(member_id)),
                        None => self.remove_member(
                            host,
                            group,
                            &member_id,
                            now,
                            wall,
                            &mut writes,
                            "session timed out",
                        ),
                    }
                }
                TimerKind::Pending(member_id) => {
                    if group.pending.get(&member_id).is_some_and(|deadline| *deadline <= now) {
                        group.pending.remove(&member_id);
                        self.maybe_complete_join(host, group, now, wall, &mut writes);
                    }
                }
                TimerKind::Join(rebalance) => {
                    if rebalance != group.rebalance || group.state != State::PreparingRebalance {
                        return;
                    }
                    if let Some(left) = group.initial_delay_left_ms {
                        if group.new_member_added && left > 0 {
                            let step = host.group_config().initial_rebalance_delay_ms.min(left);
                            group.initial_delay_left_ms = Some(left - step);
                            group.new_member_added = false;
                            self.schedule(now + step, &group.id, TimerKind::Join(rebalance));
                            return;
                        }
                    }
                    self.complete_join(host, group, now, wall, &mut writes);
                }
                TimerKind::Sync(rebalance) => {
                    if rebalance != group.rebalance || group.state != State::CompletingRebalance {
                        return;
                    }
                    let silent: Vec<String> = group
                        .members
                        .values()
                        .filter(|m| m.sync.is_none())
                        .map(|m| m.id.clone())
                        .collect();
                    for member_id in silent {
                        info!(group = %group.id, member = %member_id, "no SyncGroup in time");
                        remove_member_only(group, &member_id);
                    }
                    self.prepare_rebalance(host, group, now, wall, "sync timed out");
                    self.maybe_complete_join(host, group, now, wall, &mut writes);
                }
            }
        }
        let group = timer.group;
        if let Err(error) = append_group::<H>(host, &group, writes).await {
            warn!(%group, message = %error.message, "writing a group record failed");
        }
    }

    /// Writes group records without waiting (state changes that answer no request).
    pub(super) fn write_detached(&self, host: &Rc<H>, group: &str, writes: Vec<Write>) {
        if writes.is_empty() {
            return;
        }
        let host = host.clone();
        let group = group.to_string();
        glommio::spawn_local(async move {
            if let Err(error) = append_group::<H>(&host, &group, writes).await {
                warn!(%group, message = %error.message, "writing a group record failed");
            }
        })
        .detach();
    }
}
