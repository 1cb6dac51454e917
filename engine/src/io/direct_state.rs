//! Direct mode's bookkeeping of a file's writes, kept in memory beside the descriptor:
//! the tail block, the writes in flight and their pieces, the write that gathers appends.
//! No I/O here; [`super::direct`] submits the pieces and waits for them.

use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::task::Waker;

use glommio::io::{DmaBuffer, DmaFile};
use tracing::warn;

use crate::limits::MAX_WRITES_IN_FLIGHT;

#[derive(Default)]
pub(super) struct DirectState {
    /// Bytes from `align_down(len)` to `len`: the logical bytes of the last, partial
    /// block (on disk, zero-padded, once the writes in flight land).
    pub(super) tail: Vec<u8>,
    /// Writes not yet landed, in append order. A write leaves from the front, once it
    /// and every write before it have landed, so the bytes before the front's `from`
    /// are on the device.
    pub(super) in_flight: VecDeque<InFlight>,
    /// Numbers the writes, so that a finished piece finds its write in `in_flight`.
    pub(super) next_id: u64,
    /// Logical end of the last write that left `in_flight` landed (reset by `load_tail`).
    pub(super) landed: u64,
    /// The file's size on disk: past the logical end, space allocated ahead of the
    /// writes (see [`DirectFile::allocate_for`]).
    pub(super) allocated: u64,
    /// Bumped whenever the size on disk is set (`load_tail`, `seal`), so an allocation
    /// that raced with that does not claim space the file no longer has.
    pub(super) resized: u64,
    /// The file system refused `fallocate`: writes extend the file instead.
    pub(super) cannot_allocate: bool,
    /// Why a write failed, once one has. Sticky: bytes an append already returned for
    /// are lost, so the file refuses all further use (the log goes offline).
    pub(super) failed: Option<String>,
    /// The write at the back of `in_flight` while it gathers appends (see
    /// [`DirectFile::append`]): not yet submitted, its body still growing.
    pub(super) open: Option<OpenWrite>,
    /// Tasks waiting for `in_flight` to change.
    pub(super) waiters: Vec<Waker>,
}

/// The body of a write that gathers appends: the appends that come while
/// [`MAX_WRITES_IN_FLIGHT`] writes are in flight are copied into its buffer, one after
/// another, and go to the device as one write once a write lands (group commit).
pub(super) struct OpenWrite {
    /// The write's id in `in_flight` (always its back).
    pub(super) id: u64,
    /// Block-aligned file offset of the buffer's first byte.
    pub(super) at: u64,
    /// Logical bytes from `at` to the write's end, zero-padded to the next block; past
    /// that, room for more (its length is the capacity, not the contents).
    pub(super) buffer: DmaBuffer,
}

/// The write of one append: its pieces, each a block-aligned run of the file written
/// by one device write (see [`DirectFile::append`]).
pub(super) struct InFlight {
    pub(super) id: u64,
    /// Logical end of the file once this write lands. Lowered to the start of the
    /// held block when the next append takes that block over.
    pub(super) end: u64,
    /// In file order. Consecutive pieces may share one block (the first piece of a
    /// write and the last of the write before it): the later one holds the newer bytes.
    pub(super) pieces: Vec<Piece>,
    /// Pieces not yet landed (or failed).
    pub(super) pending: usize,
}

pub(super) struct Piece {
    /// Block-aligned file offset.
    pub(super) at: u64,
    /// The logical bytes from `at`, zero-padded to whole blocks.
    pub(super) buffer: Rc<DmaBuffer>,
    pub(super) state: PieceState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PieceState {
    /// Handed to the kernel (or about to be).
    Submitted,
    /// The first block, still being written by an earlier write: submitted once every
    /// earlier write has landed.
    Waits,
    /// The partial last block, held back while earlier writes are in flight: the next
    /// append takes it over and writes it with its own bytes, or, if none comes first,
    /// it is submitted once everything before it has landed.
    Held,
}

impl DirectState {
    /// Records that the file's size on disk was just set to `len` (trimmed or reloaded).
    pub(super) fn set_size_on_disk(&mut self, len: u64) {
        self.allocated = len;
        self.resized += 1;
    }

    /// Records that one piece of write `id` finished, retires the writes at the front
    /// that are complete, and returns the tasks to wake.
    pub(super) fn piece_done(&mut self, id: u64, result: io::Result<()>) -> Vec<Waker> {
        if let Err(error) = result {
            warn!(%error, "direct write failed; the file refuses further use");
            self.failed.get_or_insert_with(|| error.to_string());
        }
        if let Some(write) = self.in_flight.iter_mut().find(|write| write.id == id) {
            write.pending -= 1;
        }
        self.retire()
    }

    /// Retires the complete writes at the front (moving `landed`) and returns the tasks
    /// to wake.
    pub(super) fn retire(&mut self) -> Vec<Waker> {
        while self.in_flight.front().is_some_and(|write| write.pending == 0) {
            let write = self.in_flight.pop_front().expect("checked");
            if self.failed.is_none() {
                self.landed = self.landed.max(write.end);
            }
        }
        std::mem::take(&mut self.waiters)
    }

    /// Takes over the held last block of the last write, if it has one: from then on
    /// the block (and the logical bytes in it) belongs to the next write, and the last
    /// write ends where the block starts. Returns whether there was one.
    pub(super) fn take_held(&mut self) -> bool {
        let Some(write) = self.in_flight.back_mut() else { return false };
        if !matches!(write.pieces.last(), Some(piece) if piece.state == PieceState::Held) {
            return false;
        }
        let held = write.pieces.pop().expect("checked");
        write.pending -= 1;
        write.end = write.end.min(held.at);
        true
    }

    /// Whether a write is in flight or waiting to be.
    pub(super) fn busy(&self) -> bool {
        self.in_flight.iter().any(|write| write.pending > 0)
    }

    /// What an append whose end, rounded up to the block, is `padded_end` does now.
    /// `gather`: it may join or open a write that gathers; `can_open`: it has a body to
    /// open one with.
    pub(super) fn step(&self, padded_end: u64, gather: bool, can_open: bool) -> Step {
        match &self.open {
            Some(open) if gather && padded_end - open.at <= open.buffer.len() as u64 => Step::Join,
            // Appends are sequential: none goes past an open write.
            Some(_) => Step::Wait,
            None if self.in_flight.len() < MAX_WRITES_IN_FLIGHT => Step::Place,
            None if can_open => Step::Open,
            None => Step::Wait,
        }
    }

    /// Closes the open write `id`: its body, trimmed to its end, becomes a piece
    /// submitted at once, and its partial last block a held piece when earlier writes are
    /// still in flight (as `place` would cut it). Returns the new pieces' jobs.
    pub(super) fn close_open(&mut self, id: u64, file: &DmaFile, alignment: u64) -> Vec<PieceJob> {
        let open = self.open.take().expect("the open write");
        assert_eq!(open.id, id);
        let busy = self.in_flight.iter().any(|write| write.id != id && write.pending > 0);
        let write = self.in_flight.back_mut().expect("the open write is in flight");
        assert_eq!(write.id, id);
        let to = |offset: u64| usize::try_from(offset - open.at).expect("within the buffer");
        let end = write.end;
        let last_block = end - end % alignment;
        let padded_end = end.div_ceil(alignment) * alignment;
        let mut body = open.buffer;
        let mut pieces = Vec::with_capacity(2);
        if busy && end % alignment != 0 && last_block > open.at {
            let mut held = file.alloc_dma_buffer(to(padded_end) - to(last_block));
            held.as_bytes_mut().copy_from_slice(&body.as_bytes()[to(last_block)..to(padded_end)]);
            body.trim_to_size(to(last_block));
            pieces.push(Piece { at: open.at, buffer: Rc::new(body), state: PieceState::Submitted });
            pieces.push(Piece { at: last_block, buffer: Rc::new(held), state: PieceState::Held });
        } else {
            body.trim_to_size(to(padded_end));
            pieces.push(Piece { at: open.at, buffer: Rc::new(body), state: PieceState::Submitted });
        }
        // The body was counted as one pending piece.
        write.pending += pieces.len() - 1;
        let jobs = jobs_of(&pieces, write.pieces.len());
        write.pieces.extend(pieces);
        jobs
    }
}

/// What an append does next (see [`DirectState::step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Copy into the open write.
    Join,
    /// A write of its own, submitted at once.
    Place,
    /// A write of its own that stays open for the appends after it.
    Open,
    /// Wait for a write to land (or the open write to close).
    Wait,
}

/// What the task of one piece needs: its index in the write, where it goes, its bytes,
/// and whether it waits.
pub(super) type PieceJob = (usize, u64, Rc<DmaBuffer>, PieceState);

/// The jobs of `pieces`, which sit in their write from index `first` on.
pub(super) fn jobs_of(pieces: &[Piece], first: usize) -> Vec<PieceJob> {
    let job = |(index, piece): (usize, &Piece)| {
        (first + index, piece.at, piece.buffer.clone(), piece.state)
    };
    pieces.iter().enumerate().map(job).collect()
}
