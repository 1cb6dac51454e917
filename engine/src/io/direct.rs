//! Direct mode (O_DIRECT through glommio DMA files, submitted on io_uring): block
//! alignment, the DMA buffers of an append, allocation ahead of the writes, the writes in
//! flight and waiting for them to land. See the module docs of [`crate::io`].

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use glommio::io::{DmaBuffer, DmaFile};
use tracing::debug;

use crate::limits::{ALLOCATE_AHEAD_MAX, ALLOCATE_AHEAD_MIN, GATHER_BYTES, MAX_WRITES_IN_FLIGHT};

use super::{
    injected, jobs_of, to_io, DirectState, FileBytes, InFlight, OpenWrite, Piece, PieceJob,
    PieceState, Step,
};

/// Direct mode's state of a file, which outlives its descriptor: the block size, the
/// tail block, the writes in flight and the space allocated ahead.
pub(super) struct DirectFile {
    pub(super) alignment: u64,
    pub(super) state: Rc<RefCell<DirectState>>,
}

thread_local! {
    /// Direct-mode writes in flight on this thread's executor: (executor id, count).
    /// Keyed by executor because an executor dropped with writes in flight (the end of a
    /// test) leaks their tasks, and the thread may run another executor next.
    pub(super) static WRITES_IN_FLIGHT: Cell<(usize, usize)> = const { Cell::new((usize::MAX, 0)) };
}

pub(super) fn writes_in_flight() -> usize {
    let executor = glommio::executor().id();
    WRITES_IN_FLIGHT.with(|count| match count.get() {
        (id, n) if id == executor => n,
        _ => 0,
    })
}

/// Counts one write in [`WRITES_IN_FLIGHT`] while its task lives.
pub(super) struct WriteCounted {
    pub(super) executor: usize,
}

impl WriteCounted {
    fn new() -> Self {
        let executor = glommio::executor().id();
        WRITES_IN_FLIGHT.with(|count| count.set((executor, writes_in_flight() + 1)));
        WriteCounted { executor }
    }
}

impl Drop for WriteCounted {
    fn drop(&mut self) {
        WRITES_IN_FLIGHT.with(|count| {
            let (id, n) = count.get();
            if id == self.executor {
                count.set((id, n.saturating_sub(1)));
            }
        });
    }
}

/// Resolves once no direct-mode write submitted on this thread is in flight. For tests
/// that stand for a crash by dropping a log: a write the kernel has accepted still
/// lands after the process dies, and this waits for it as the kernel would.
pub async fn writes_landed() {
    while writes_in_flight() > 0 {
        glommio::timer::sleep(Duration::from_micros(100)).await;
    }
}

impl DirectFile {
    fn align_down(&self, value: u64) -> u64 {
        value - value % self.alignment
    }

    fn align_up(&self, value: u64) -> u64 {
        value.div_ceil(self.alignment) * self.alignment
    }

    /// Reloads the partial last block of a file of logical length `len` into memory.
    pub(super) async fn load_tail(&self, file: &DmaFile, len: u64) -> io::Result<()> {
        let start = self.align_down(len);
        let tail_len = usize::try_from(len - start).expect("tail < alignment");
        let mut tail = Vec::with_capacity(tail_len);
        if tail_len > 0 {
            let block = file
                .read_at_aligned(start, usize::try_from(self.alignment).expect("small"))
                .await
                .map_err(to_io)?;
            if block.len() < tail_len {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short tail read"));
            }
            tail.extend_from_slice(&block[..tail_len]);
        }
        let mut state = self.state.borrow_mut();
        state.tail = tail;
        state.landed = len;
        state.set_size_on_disk(len);
        Ok(())
    }

    /// Fails if a write of this file has failed.
    pub(super) fn check_failed(&self) -> io::Result<()> {
        match &self.state.borrow().failed {
            Some(reason) => Err(io::Error::other(format!(
                "an earlier write to this file failed, bytes already appended are lost: {reason}"
            ))),
            None => Ok(()),
        }
    }

    /// Waits for every write in flight to land; then fails if any write failed.
    pub(super) async fn settle(&self) -> io::Result<()> {
        wait_for(&self.state, |state| state.in_flight.is_empty()).await;
        self.check_failed()
    }

    /// Writes `tail + data`, zero-padded to whole blocks, at `align_down(position)`, in
    /// the background, and returns once the write is queued (with `wait`, once it has
    /// landed). `fail` makes the write fail without writing (an injected fault).
    ///
    /// Up to [`MAX_WRITES_IN_FLIGHT`] writes are in flight at once, and no two of them
    /// write one block: two writes of one block in flight may land in either order.
    /// Consecutive appends share a block when the file ends mid-block, so:
    /// - While earlier writes are in flight, an append holds back its partial last
    ///   block (`Held`). The next append takes it over and writes it, with its own
    ///   bytes, in its own write, submitted at once: a stream of appends becomes a
    ///   stream of writes of distinct blocks, none waiting for another. If no append
    ///   comes first, the held block is submitted once every write before it landed.
    /// - An append whose first block is still being written (it was not held back)
    ///   writes that block in a piece that waits until every earlier write has landed
    ///   (`Waits`); its other blocks go at once.
    /// - A block the file already holds (the partial block of a write that landed) is
    ///   written in a piece of its own: ext4 would hand a write that covers both
    ///   written blocks and blocks only allocated ahead to a kernel worker thread.
    ///
    /// When all of them are in flight, the append does not wait for one to land: it
    /// opens a write that gathers (group commit). Its body is a buffer with room for
    /// [`GATHER_BYTES`]; the appends that come while it is open are copied into it, one
    /// after another, and it goes to the device as one write once a write lands. So a
    /// stream of small appends (a producer with many small requests in flight) costs the
    /// device a few large writes, not one write each: on a virtual disk every write
    /// also costs the shard a notification of the device (a VM exit).
    ///
    /// The copy into the DMA buffers runs while earlier writes are in flight. An append
    /// has landed once its bytes and every byte before them are on the device.
    pub(super) async fn append(
        &self,
        file: &Rc<DmaFile>,
        data: &[u8],
        position: u64,
        fail: bool,
        wait: bool,
    ) -> io::Result<()> {
        let end = position + data.len() as u64;
        let padded_end = self.align_up(end);
        // Injected faults and torn appends take a write of their own.
        let gather = !fail && !wait;
        // An open write's body starts at the latest one block past the append's start
        // (see `place`): an append within one block has no body to gather into.
        let can_open = gather && end > self.align_down(position) + self.alignment;
        self.check_failed()?;
        self.allocate_for(file, padded_end).await;
        loop {
            self.check_failed()?;
            let step = self.state.borrow().step(padded_end, gather, can_open);
            match step {
                Step::Join => {
                    self.join(data, position);
                    break;
                }
                Step::Place => {
                    let (id, jobs) = self.place(file, data, position, fail, false);
                    spawn_pieces(file, &self.state, id, jobs, fail);
                    break;
                }
                Step::Open => {
                    let (id, jobs) = self.place(file, data, position, false, true);
                    spawn_pieces(file, &self.state, id, jobs, false);
                    spawn_open(file, &self.state, id, self.alignment);
                    break;
                }
                Step::Wait => {
                    wait_for(&self.state, |state| {
                        state.step(padded_end, gather, can_open) != Step::Wait
                    })
                    .await;
                }
            }
        }
        if wait {
            return self.settle().await;
        }
        Ok(())
    }

    /// Copies an append into the open write's buffer (its room checked by
    /// [`DirectState::step`]) and moves the write's end.
    fn join(&self, data: &[u8], position: u64) {
        let end = position + data.len() as u64;
        let (last_block, padded_end) = (self.align_down(end), self.align_up(end));
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let open = state.open.as_mut().expect("an open write to join");
        let write = state.in_flight.back_mut().expect("the open write is in flight");
        assert_eq!(write.id, open.id);
        debug_assert_eq!(write.end, position);
        debug_assert_eq!(self.align_down(position) + state.tail.len() as u64, position);
        let to = |offset: u64| usize::try_from(offset - open.at).expect("within the buffer");
        let bytes = open.buffer.as_bytes_mut();
        bytes[to(position)..to(end)].copy_from_slice(data);
        bytes[to(end)..to(padded_end)].fill(0);
        state.tail = bytes[to(last_block)..to(end)].to_vec();
        write.end = end;
    }

    /// The part of [`DirectFile::append`] that runs without waiting: cuts the append
    /// into pieces and puts its write in `in_flight`. Returns the write's id and, per
    /// piece, what its task needs. With `gathering`, the write is the open write: its
    /// body goes to a buffer with room for more appends (`state.open`) instead of a
    /// piece, and its partial last block stays in that body (the next append joins it).
    fn place(
        &self,
        file: &DmaFile,
        data: &[u8],
        position: u64,
        fail: bool,
        gathering: bool,
    ) -> (u64, Vec<PieceJob>) {
        let start = self.align_down(position);
        let end = position + data.len() as u64;
        let write_end = self.align_up(end);
        let mut state = self.state.borrow_mut();
        let tail = std::mem::take(&mut state.tail);
        debug_assert_eq!(start + tail.len() as u64, position);
        let total = tail.len() + data.len();
        // The new partial block: the bytes past the last whole block.
        let last_block = usize::try_from(self.align_down(end) - start).expect("within write");
        let mut new_tail = vec![0; total - last_block];
        fill(&mut new_tail, &tail, data, last_block);
        state.tail = new_tail;

        let alignment = usize::try_from(self.alignment).expect("small");
        let padded = usize::try_from(write_end - start).expect("write < 2 GiB");
        let took_held = state.take_held();
        let busy = state.busy();
        // The first block: held back by the last append (now ours, never written), being
        // written by an earlier write (wait for it), on disk (a piece of its own), or new.
        let head_waits = !tail.is_empty() && !took_held && busy;
        let head_written = !tail.is_empty() && !took_held && !busy;
        // (An injected failure goes to a piece that is written for sure.)
        let hold = busy
            && !fail
            && !gathering
            && end % self.alignment != 0
            && !(head_waits && last_block == 0);
        let mut cuts: Vec<(usize, usize, PieceState)> = Vec::with_capacity(3);
        let body_end = if hold { last_block } else { padded };
        let mut at = 0;
        if (head_waits || head_written) && body_end > 0 {
            let state = if head_waits { PieceState::Waits } else { PieceState::Submitted };
            cuts.push((0, alignment, state));
            at = alignment;
        }
        let id = state.next_id;
        state.next_id += 1;
        let mut gathers = false;
        if body_end > at {
            if gathering {
                let mut buffer = file.alloc_dma_buffer(GATHER_BYTES.max(body_end - at));
                fill(&mut buffer.as_bytes_mut()[..body_end - at], &tail, data, at);
                state.open = Some(OpenWrite { id, at: start + at as u64, buffer });
                gathers = true;
            } else {
                cuts.push((at, body_end, PieceState::Submitted));
            }
        }
        assert_eq!(gathers, gathering, "an open write has a body");
        if hold {
            cuts.push((last_block, padded, PieceState::Held));
        }
        let pieces: Vec<Piece> = cuts
            .iter()
            .map(|&(from, until, state)| {
                let mut buffer = file.alloc_dma_buffer(until - from);
                fill(buffer.as_bytes_mut(), &tail, data, from);
                Piece { at: start + from as u64, buffer: Rc::new(buffer), state }
            })
            .collect();
        let jobs = jobs_of(&pieces, 0);
        // The open body counts as one pending piece until it is cut into pieces.
        let pending = pieces.len() + usize::from(gathers);
        state.in_flight.push_back(InFlight { id, end, pending, pieces });
        // A write left with nothing pending by the take-over retires now.
        let waiters = if took_held { state.retire() } else { Vec::new() };
        drop(state);
        for waker in waiters {
            waker.wake();
        }
        (id, jobs)
    }

    /// Makes the file's size on disk at least `end`, allocating ahead (unwritten extents,
    /// which read as zeros). A write past the size on disk extends the file, and ext4
    /// cannot do that without blocking: io_uring would hand every such write to a
    /// kernel worker thread (on the shard's CPU), which runs the writes of one file one
    /// at a time and waits for each. Writes within the size are submitted from the
    /// shard and several run at once. The space past the logical end is given back by
    /// `seal` (and by recovery after a crash, which reads it as zero padding).
    ///
    /// Best effort: where the file system refuses (no `fallocate`, or no room for the
    /// space ahead), the write extends the file as it would without this, and fails
    /// only if the write itself does.
    async fn allocate_for(&self, file: &DmaFile, end: u64) {
        let (allocated, resized, cannot) = {
            let state = self.state.borrow();
            (state.allocated, state.resized, state.cannot_allocate)
        };
        if end <= allocated || cannot {
            return;
        }
        let ahead = end + end.clamp(ALLOCATE_AHEAD_MIN, ALLOCATE_AHEAD_MAX);
        let ahead = ahead - ahead % self.alignment;
        let mut allocated_to = None;
        for target in [ahead, end] {
            match file.pre_allocate(target, false).await.map_err(to_io) {
                Ok(()) => {
                    allocated_to = Some(target);
                    break;
                }
                Err(error) if error.raw_os_error() == Some(nix::libc::EOPNOTSUPP) => {
                    debug!(%error, "no fallocate here: direct writes extend the file");
                    self.state.borrow_mut().cannot_allocate = true;
                    return;
                }
                Err(_) => {} // No room for the space ahead: try for this write alone.
            }
        }
        let mut state = self.state.borrow_mut();
        if let Some(target) = allocated_to.filter(|_| state.resized == resized) {
            state.allocated = state.allocated.max(target);
        }
    }

    /// Waits until the logical bytes before `end` are on the device: the writes up to
    /// `end` have left `in_flight` landed, or none is in flight. Fails if any write
    /// failed.
    pub(super) async fn wait_landed(&self, end: u64) -> io::Result<()> {
        wait_for(&self.state, |state| state.in_flight.is_empty() || state.landed >= end).await;
        self.check_failed()
    }

    /// A copy of the open write's body, with its file offset, if it reaches past
    /// `position`.
    fn open_copy(&self, file: &DmaFile, position: u64) -> Option<(u64, Rc<DmaBuffer>)> {
        let state = self.state.borrow();
        let open = state.open.as_ref()?;
        let end = state.in_flight.back().expect("the open write is in flight").end;
        let len = usize::try_from(self.align_up(end) - open.at).expect("within the buffer");
        if open.at + len as u64 <= position {
            return None;
        }
        let mut copy = file.alloc_dma_buffer(len);
        copy.as_bytes_mut().copy_from_slice(&open.buffer.as_bytes()[..len]);
        Some((open.at, Rc::new(copy)))
    }

    /// Reads `len` bytes at `position` (within the logical length): from disk up to the
    /// first piece not yet landed, from the pieces' buffers after.
    pub(super) async fn read_at(
        &self,
        file: &DmaFile,
        position: u64,
        len: usize,
    ) -> io::Result<FileBytes> {
        self.check_failed()?;
        let end = position + len as u64;
        let mut pieces: Vec<(u64, Rc<DmaBuffer>)> = self
            .state
            .borrow()
            .in_flight
            .iter()
            .flat_map(|write| &write.pieces)
            .filter(|piece| piece.at + piece.buffer.len() as u64 > position)
            .map(|piece| (piece.at, piece.buffer.clone()))
            .collect();
        // The open write's body comes last in file order; its buffer keeps growing, so
        // the read takes a copy of what it holds now.
        if let Some(copy) = self.open_copy(file, position) {
            pieces.push(copy);
        }
        let Some(from) = pieces.first().map(|(at, _)| (*at).max(position)).filter(|at| end > *at)
        else {
            return Ok(FileBytes::Uring(file.read_at(position, len).await.map_err(to_io)?));
        };
        let mut bytes = Vec::with_capacity(len);
        if position < from {
            let on_disk = usize::try_from(from - position).expect("read < 2 GiB");
            let read = file.read_at(position, on_disk).await.map_err(to_io)?;
            if read.len() < on_disk {
                return Ok(FileBytes::Owned(read.to_vec()));
            }
            bytes.extend_from_slice(&read);
        }
        copy_from_pieces(&pieces, from, end, &mut bytes);
        Ok(FileBytes::Owned(bytes))
    }
}

/// Resolves once `ready` holds for `state`, re-checked whenever a write finishes.
pub(super) async fn wait_for(state: &RefCell<DirectState>, ready: impl Fn(&DirectState) -> bool) {
    std::future::poll_fn(|context| {
        let mut state = state.borrow_mut();
        if ready(&state) {
            return Poll::Ready(());
        }
        state.waiters.push(context.waker().clone());
        Poll::Pending
    })
    .await;
}

/// Fills `out` with the bytes of `tail + data + zero padding` starting at `offset`.
pub(super) fn fill(out: &mut [u8], tail: &[u8], data: &[u8], offset: usize) {
    let mut written = 0;
    let mut skip = offset;
    for source in [tail, data] {
        if skip >= source.len() {
            skip -= source.len();
            continue;
        }
        let n = (source.len() - skip).min(out.len() - written);
        out[written..written + n].copy_from_slice(&source[skip..skip + n]);
        written += n;
        skip = 0;
    }
    out[written..].fill(0);
}

/// Appends the logical bytes `[position, end)` to `bytes` from `pieces` (in file
/// order, covering the range from the first piece's start; where two share a block,
/// the later one holds the newer bytes).
pub(super) fn copy_from_pieces(
    pieces: &[(u64, Rc<DmaBuffer>)],
    position: u64,
    end: u64,
    bytes: &mut Vec<u8>,
) {
    let base = bytes.len();
    let len = usize::try_from(end - position).expect("read < 2 GiB");
    bytes.resize(base + len, 0);
    let mut covered = position;
    for (at, buffer) in pieces {
        let (a, b) = (position.max(*at), end.min(at + buffer.len() as u64));
        if a < b {
            debug_assert!(a <= covered, "the pieces leave no gap");
            let from = usize::try_from(a - at).expect("within buffer");
            let until = usize::try_from(b - at).expect("within buffer");
            let to = base + usize::try_from(a - position).expect("within read");
            bytes[to..to + (until - from)].copy_from_slice(&buffer.as_bytes()[from..until]);
            covered = covered.max(b);
        }
    }
    debug_assert_eq!(covered, end, "the pieces cover the read");
}

/// Waits until held piece `index` of write `id` is to be submitted (every other piece
/// of the write and every earlier write have landed: true, and the piece is marked
/// submitted) or has been taken over by the next append (false).
pub(super) async fn wait_to_flush(state: &RefCell<DirectState>, id: u64, index: usize) -> bool {
    std::future::poll_fn(|context| {
        let mut state = state.borrow_mut();
        let front = state.in_flight.front().is_some_and(|write| write.id == id);
        let Some(write) = state.in_flight.iter_mut().find(|write| write.id == id) else {
            return Poll::Ready(false);
        };
        let Some(piece) = write.pieces.get_mut(index).filter(|p| p.state == PieceState::Held)
        else {
            return Poll::Ready(false);
        };
        if front && write.pending == 1 {
            piece.state = PieceState::Submitted;
            return Poll::Ready(true);
        }
        state.waiters.push(context.waker().clone());
        Poll::Pending
    })
    .await
}

/// Starts one task per piece of write `id`: it waits as its piece's state says, then
/// writes the piece (or fails it: `fail` fails the last one, an injected fault) and
/// records the result.
pub(super) fn spawn_pieces(
    file: &Rc<DmaFile>,
    state: &Rc<RefCell<DirectState>>,
    id: u64,
    jobs: Vec<PieceJob>,
    fail: bool,
) {
    let last = jobs.len().saturating_sub(1);
    for (index, at, buffer, piece_state) in jobs {
        let counted = WriteCounted::new();
        let (file, shared) = (file.clone(), state.clone());
        let fail = fail && index == last;
        glommio::spawn_local(async move {
            let _counted = counted;
            match piece_state {
                PieceState::Submitted => {}
                // Every earlier write has left `in_flight` (landed or failed).
                PieceState::Waits => {
                    wait_for(&shared, |state| state.in_flight.front().is_some_and(|w| w.id == id))
                        .await
                }
                PieceState::Held => {
                    if !wait_to_flush(&shared, id, index).await {
                        return; // Taken over by the next append.
                    }
                }
            }
            let earlier_failed = shared.borrow().failed.is_some();
            let result = if earlier_failed {
                Err(io::Error::other("not written: an earlier write failed"))
            } else if fail {
                Err(injected("write"))
            } else {
                write_whole(&file, buffer, at).await
            };
            let waiters = shared.borrow_mut().piece_done(id, result);
            for waker in waiters {
                waker.wake();
            }
        })
        .detach();
    }
}

/// Starts the task that closes the open write `id` once fewer than
/// [`MAX_WRITES_IN_FLIGHT`] writes are in flight before it, and submits its pieces.
pub(super) fn spawn_open(
    file: &Rc<DmaFile>,
    state: &Rc<RefCell<DirectState>>,
    id: u64,
    alignment: u64,
) {
    let counted = WriteCounted::new();
    let (file, shared) = (file.clone(), state.clone());
    glommio::spawn_local(async move {
        let _counted = counted;
        // The open write is the back of `in_flight`: the writes before it are the rest.
        wait_for(&shared, |state| state.in_flight.len() <= MAX_WRITES_IN_FLIGHT).await;
        let jobs = shared.borrow_mut().close_open(id, &file, alignment);
        // Appends waiting for the open write to close may go now.
        let waiters = std::mem::take(&mut shared.borrow_mut().waiters);
        for waker in waiters {
            waker.wake();
        }
        spawn_pieces(&file, &shared, id, jobs, false);
    })
    .detach();
}

/// Writes a whole DMA buffer at `at` (a block boundary).
pub(super) async fn write_whole(file: &DmaFile, buffer: Rc<DmaBuffer>, at: u64) -> io::Result<()> {
    let len = buffer.len();
    let mut done = file.write_rc_at(buffer.clone(), at).await.map_err(to_io)?;
    while done < len {
        // The kernel accepted a prefix (rare with O_DIRECT; block-aligned): write the
        // rest from a new buffer.
        let rest = &buffer.as_bytes()[done..];
        let mut more = file.alloc_dma_buffer(rest.len());
        more.as_bytes_mut().copy_from_slice(rest);
        let n = file.write_at(more, at + done as u64).await.map_err(to_io)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("direct write at {} wrote 0 bytes", at + done as u64),
            ));
        }
        done += n;
    }
    Ok(())
}
