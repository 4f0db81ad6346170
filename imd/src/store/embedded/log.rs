//! The embedded store's commit log: an append-only, checksummed, segmented write-ahead
//! log. The store appends one record per commit batch and `fdatasync`s it: that is the
//! commit's durability point. A background indexer later applies the records to the
//! database and keeps the LSN (log sequence number) up to which everything is applied in
//! the database, in the same transaction as the rows it wrote; that applied LSN alone
//! decides what is replayed at open (every intact record above it) and which segments
//! may go ([`CommitLog::release`]).
//!
//! The log is a directory of segment files, `commit-{first_lsn:020}.log`, named after
//! the LSN of their first record, so that their names sort in LSN order. Appends go to
//! the newest segment; once it holds [`SEGMENT_BYTES`] the next append starts a new one.
//! Each open starts a new segment too, so that an append never follows a tail that an
//! open cut off or read.
//!
//! A segment is a sequence of frames, little-endian:
//!
//! - `lsn: u64`: the record's LSN, one past the previous record's (a segment's first
//!   record has the LSN of its file name);
//! - `len: u32`: the payload's length in bytes, at most [`MAX_PAYLOAD`];
//! - `crc: u32`: CRC-32 (crc32fast) of the `lsn` and `len` bytes and the payload;
//! - the payload.
//!
//! A frame is written with one `write_all` of the whole frame, then `sync_data`, and the
//! append is acknowledged only after `sync_data` returned. A crash can thus leave at most
//! one torn frame, at the end of the last segment, and that frame was never acknowledged:
//! open cuts it off (it truncates the file to the last intact frame and fsyncs it), and
//! the first bad frame of the last segment ends the log. A bad frame in any earlier
//! segment can only be damage to acknowledged records, and open fails with
//! `InvalidData` rather than lose them silently; so does a hole between two segments
//! above the applied LSN (a segment file gone).
//!
//! An append that returned an error may still have reached the disk, and then it is
//! replayed at the next open. After such an error the log refuses further appends (the
//! state of the file is unknown, and a retried `fsync` can report success for lost
//! data); the store reopens it, which repairs the tail.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Bytes a segment grows to before the next append starts a new one.
pub(super) const SEGMENT_BYTES: u64 = 64 << 20;

/// The most payload bytes one record may hold; open treats a larger length as a bad
/// frame, so that a garbage length never makes it allocate gigabytes.
const MAX_PAYLOAD: usize = 256 << 20;

/// Bytes of a frame's header: `lsn` (8), `len` (4), `crc` (4).
const HEADER: usize = 16;

/// The read buffer's size when open reads a segment.
const READ_BUFFER: usize = 1 << 20;

/// The commit log: the segment appends go to, and the older ones not released yet.
pub(super) struct CommitLog {
    /// The directory of the segments.
    dir: PathBuf,
    /// The current segment, open for writing at its end.
    file: File,
    /// The LSN of the current segment's first record (its file name).
    first: u64,
    /// Bytes in the current segment.
    len: u64,
    /// The LSN the next append gets.
    next: u64,
    /// The segments before the current one, oldest first: their first LSN and path.
    older: Vec<(u64, PathBuf)>,
    /// The size at which the next append starts a new segment ([`SEGMENT_BYTES`] but in
    /// tests).
    segment_bytes: u64,
    /// Set when an append or a reset failed part-way: the current file's state is
    /// unknown, so appends are refused until the log is reopened (or reset).
    broken: bool,
}

/// One intact record read back at open.
#[derive(Debug)]
pub(super) struct Replayed {
    /// The record's LSN.
    pub(super) lsn: u64,
    /// What was appended.
    pub(super) payload: Vec<u8>,
}

impl CommitLog {
    /// Opens the log in `dir` (creating the dir if missing): reads every segment
    /// (`commit-{first_lsn:020}.log`) in LSN order and returns the intact records with
    /// an LSN above `applied`, in order. A torn or corrupt frame at the end of the LAST
    /// segment (a crash during an append that was never acknowledged) is cut off (the
    /// file is truncated to the last intact frame and fsynced); a bad frame anywhere
    /// else is an error (io::ErrorKind::InvalidData with a message naming the file and
    /// offset). LSNs start at 1 in an empty log; otherwise the next LSN is one past the
    /// last intact record (or `applied + 1` if that is larger, e.g. when every segment
    /// was already deleted). Appends go to a NEW segment file (created at open, fsync the
    /// dir), never to the end of an old one.
    pub(super) fn open(dir: &Path, applied: u64) -> io::Result<(CommitLog, Vec<Replayed>)> {
        Self::open_with_segment_bytes(dir, applied, SEGMENT_BYTES)
    }

    /// [`open`](Self::open), with segments of `segment_bytes` instead of
    /// [`SEGMENT_BYTES`] (tests rotate with small ones).
    pub(super) fn open_with_segment_bytes(
        dir: &Path,
        applied: u64,
        segment_bytes: u64,
    ) -> io::Result<(CommitLog, Vec<Replayed>)> {
        fs::create_dir_all(dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("commit log {}: creating it: {e}", dir.display()),
            )
        })?;
        let mut older = list_segments(dir)?;
        let mut replayed = Vec::new();
        // One past the last intact record so far, and the segment it is in.
        let mut end: Option<(u64, &Path)> = None;
        for (i, (first, path)) in older.iter().enumerate() {
            if let Some((prev_end, prev)) = end {
                check_boundary(prev, prev_end, path, *first, applied)?;
            }
            let last = i + 1 == older.len();
            end = Some((
                read_segment(path, *first, last, applied, &mut replayed)?,
                path,
            ));
        }
        let next = end.map_or(1, |(end, _)| end).max(applied.saturating_add(1));
        // The last segment is empty (an open made it, or its only frame was torn) and
        // named after the next LSN: it becomes the new segment.
        if older.last().is_some_and(|(first, _)| *first == next) {
            older.pop();
        }
        let file = create_segment(dir, next)?;
        let log = CommitLog {
            dir: dir.to_path_buf(),
            file,
            first: next,
            len: 0,
            next,
            older,
            segment_bytes,
            broken: false,
        };
        Ok((log, replayed))
    }

    /// Appends one record and makes it durable (write_all then `sync_data`) before
    /// returning its LSN. Starts a new segment first when the current one holds
    /// SEGMENT_BYTES or more (create the file, fsync the directory).
    pub(super) fn append(&mut self, payload: &[u8]) -> io::Result<u64> {
        if self.broken {
            return Err(io::Error::other(format!(
                "commit log {}: an earlier append or reset failed; reopen the log",
                self.dir.display()
            )));
        }
        let lsn = self.next;
        let frame = encode(lsn, payload)?;
        if self.len >= self.segment_bytes {
            self.rotate()?;
        }
        if let Err(e) = self
            .file
            .write_all(&frame)
            .and_then(|()| self.file.sync_data())
        {
            self.broken = true;
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "commit log {}: appending {lsn}: {e}",
                    self.current().display()
                ),
            ));
        }
        self.len += frame.len() as u64;
        self.next += 1;
        Ok(lsn)
    }

    /// The LSN the next append will get.
    pub(super) fn next_lsn(&self) -> u64 {
        self.next
    }

    /// Deletes every segment, other than the current one, whose records all have an LSN
    /// at or below `applied` (the segment after it starts at or below `applied + 1`).
    /// Returns how many files it removed.
    pub(super) fn release(&mut self, applied: u64) -> io::Result<usize> {
        // The segments' first LSNs grow, so the ones to delete are a prefix; deleting
        // them oldest first leaves no hole if a crash stops it half-way.
        let mut count = 0;
        while !self.older.is_empty() {
            let after = self.older.get(1).map_or(self.first, |(first, _)| *first);
            if after > applied.saturating_add(1) {
                break;
            }
            remove_segment(&self.older[0].1)?;
            self.older.remove(0);
            count += 1;
        }
        if count > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(count)
    }

    /// Deletes every segment, including the current one, and starts an empty one with
    /// the same next LSN; for when everything is applied (called at open after the
    /// replay has been applied, and in tests).
    pub(super) fn reset(&mut self) -> io::Result<()> {
        // Oldest first, the current one last, as in `release`.
        while !self.older.is_empty() {
            remove_segment(&self.older[0].1)?;
            self.older.remove(0);
        }
        // From here on the current file is gone or about to be: appends to it would be
        // lost, so they are refused until a new segment is in place.
        self.broken = true;
        remove_segment(&self.current())?;
        self.file = create_segment(&self.dir, self.next)?;
        self.first = self.next;
        self.len = 0;
        self.broken = false;
        Ok(())
    }

    /// Starts a new segment, named after the next LSN.
    fn rotate(&mut self) -> io::Result<()> {
        let file = create_segment(&self.dir, self.next)?;
        let current = self.current();
        self.older.push((self.first, current));
        self.file = file;
        self.first = self.next;
        self.len = 0;
        Ok(())
    }

    /// The current segment's path.
    fn current(&self) -> PathBuf {
        segment_path(&self.dir, self.first)
    }
}

/// The path of the segment whose first record has LSN `first`.
fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("commit-{first:020}.log"))
}

/// The first LSN in a segment's file name, or `None` if `name` is not a segment's.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("commit-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments in `dir`, in LSN order: their first LSN and path. Other files are left
/// alone.
fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let context =
        |e: io::Error| io::Error::new(e.kind(), format!("commit log {}: {e}", dir.display()));
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(context)? {
        let entry = entry.map_err(context)?;
        let name = entry.file_name();
        if let Some(first) = name.to_str().and_then(parse_segment_name) {
            segments.push((first, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|(first, _)| *first);
    Ok(segments)
}

/// Checks that the segment `path`, whose first LSN is `first`, follows the one before
/// it (`prev`, whose records end before `prev_end`): no overlap, and no hole unless all
/// of it is applied (a segment made at an open whose applied LSN was past the log).
fn check_boundary(
    prev: &Path,
    prev_end: u64,
    path: &Path,
    first: u64,
    applied: u64,
) -> io::Result<()> {
    if first < prev_end {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "commit log {}: starts at {first}, but {} holds records up to {}",
                path.display(),
                prev.display(),
                prev_end - 1
            ),
        ));
    }
    if first > prev_end && first - 1 > applied {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "commit log {}: records {prev_end} to {} are missing (applied up to {applied}) \
                 between {} and it",
                path.display(),
                first - 1,
                prev.display()
            ),
        ));
    }
    Ok(())
}

/// What reading one frame found.
enum Frame {
    /// An intact frame: its payload.
    Intact(Vec<u8>),
    /// A torn or corrupt frame: why.
    Bad(String),
}

/// Reads the segment `path`, whose first record has LSN `first`, and pushes its records
/// above `applied` to `out`. Returns one past its last intact record's LSN. A bad frame
/// ends the `last` segment (the file is cut there and fsynced) and is an error in any
/// other.
fn read_segment(
    path: &Path,
    first: u64,
    last: bool,
    applied: u64,
    out: &mut Vec<Replayed>,
) -> io::Result<u64> {
    let context =
        |e: io::Error| io::Error::new(e.kind(), format!("commit log {}: {e}", path.display()));
    let file = OpenOptions::new()
        .read(true)
        .write(last)
        .open(path)
        .map_err(context)?;
    let size = file.metadata().map_err(context)?.len();
    let mut reader = BufReader::with_capacity(READ_BUFFER, &file);
    let mut offset = 0;
    let mut lsn = first;
    while offset < size {
        match read_frame(&mut reader, size - offset, lsn).map_err(context)? {
            Frame::Intact(payload) => {
                offset += (HEADER + payload.len()) as u64;
                if lsn > applied {
                    out.push(Replayed { lsn, payload });
                }
                lsn += 1;
            }
            Frame::Bad(_) if last => {
                // Never acknowledged (see the module's doc): cut it off.
                file.set_len(offset).map_err(context)?;
                file.sync_all().map_err(context)?;
                break;
            }
            Frame::Bad(why) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "commit log {}: bad frame at offset {offset}: {why}",
                        path.display()
                    ),
                ));
            }
        }
    }
    Ok(lsn)
}

/// Reads the frame at the reader's position, `remaining` bytes before the end of the
/// file, which should hold the record `lsn`.
fn read_frame(reader: &mut impl Read, remaining: u64, lsn: u64) -> io::Result<Frame> {
    if remaining < HEADER as u64 {
        return Ok(Frame::Bad(format!(
            "{remaining} bytes, less than a frame's header"
        )));
    }
    let mut header = [0; HEADER];
    reader.read_exact(&mut header)?;
    let [
        l0,
        l1,
        l2,
        l3,
        l4,
        l5,
        l6,
        l7,
        n0,
        n1,
        n2,
        n3,
        c0,
        c1,
        c2,
        c3,
    ] = header;
    let found = u64::from_le_bytes([l0, l1, l2, l3, l4, l5, l6, l7]);
    let len = u32::from_le_bytes([n0, n1, n2, n3]);
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    // Checked before anything is allocated: the length may be garbage.
    let Ok(len) = usize::try_from(len) else {
        return Ok(Frame::Bad(format!("length {len} too large")));
    };
    if len > MAX_PAYLOAD {
        return Ok(Frame::Bad(format!(
            "length {len} over the limit of {MAX_PAYLOAD}"
        )));
    }
    if len as u64 > remaining - HEADER as u64 {
        return Ok(Frame::Bad(format!("length {len} past the end of the file")));
    }
    let mut payload = vec![0; len];
    reader.read_exact(&mut payload)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[..HEADER - 4]);
    hasher.update(&payload);
    if hasher.finalize() != crc {
        return Ok(Frame::Bad("checksum mismatch".to_string()));
    }
    if found != lsn {
        return Ok(Frame::Bad(format!("record {found} where {lsn} was due")));
    }
    Ok(Frame::Intact(payload))
}

/// The frame of the record `lsn` (see the module's doc), built in memory so that it is
/// written with one `write_all`.
fn encode(lsn: u64, payload: &[u8]) -> io::Result<Vec<u8>> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|_| payload.len() <= MAX_PAYLOAD)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "commit log: a record of {} bytes, over the limit of {MAX_PAYLOAD}",
                    payload.len()
                ),
            )
        })?;
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    frame.extend_from_slice(&lsn.to_le_bytes());
    frame.extend_from_slice(&len.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&frame);
    hasher.update(payload);
    frame.extend_from_slice(&hasher.finalize().to_le_bytes());
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// Creates the segment whose first record will have LSN `first`, empty, and fsyncs the
/// directory. A file of that name is truncated: it can hold no intact record, since
/// `first` is past every intact record of the log, and open cut off the last segment's
/// bad tail (a bad frame in any other segment is an error).
fn create_segment(dir: &Path, first: u64) -> io::Result<File> {
    let path = segment_path(dir, first);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("commit log {}: creating it: {e}", path.display()),
            )
        })?;
    sync_dir(dir)?;
    Ok(file)
}

/// Removes a segment's file; one already gone is fine.
fn remove_segment(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
            e.kind(),
            format!("commit log {}: removing it: {e}", path.display()),
        )),
        _ => Ok(()),
    }
}

/// Fsyncs `dir`, so that the files created or removed in it stay so after a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("commit log {}: syncing it: {e}", dir.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The payload of the record `lsn` in these tests.
    fn payload(lsn: u64) -> Vec<u8> {
        format!("record {lsn} ")
            .repeat(lsn as usize % 7 + 1)
            .into_bytes()
    }

    /// The segment files in `dir`, in LSN order.
    fn segments(dir: &Path) -> Vec<PathBuf> {
        list_segments(dir)
            .unwrap()
            .into_iter()
            .map(|(_, path)| path)
            .collect()
    }

    /// The LSNs of `replayed`, checking every payload.
    fn lsns(replayed: &[Replayed]) -> Vec<u64> {
        for record in replayed {
            assert_eq!(record.payload, payload(record.lsn), "record {}", record.lsn);
        }
        replayed.iter().map(|r| r.lsn).collect()
    }

    /// Opens the log in `dir` with segments of `bytes` and appends the records up to
    /// `last`, checking their LSNs.
    fn fill(dir: &Path, applied: u64, bytes: u64, last: u64) -> CommitLog {
        let (mut log, _) = CommitLog::open_with_segment_bytes(dir, applied, bytes).unwrap();
        while log.next_lsn() <= last {
            let lsn = log.next_lsn();
            assert_eq!(log.append(&payload(lsn)).unwrap(), lsn);
        }
        log
    }

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    /// The offset of the frame `index` (from 0) in the segment `path`.
    fn frame_offset(path: &Path, index: usize) -> u64 {
        let bytes = fs::read(path).unwrap();
        let mut offset = 0;
        for _ in 0..index {
            let len = u32::from_le_bytes(bytes[offset + 8..offset + 12].try_into().unwrap());
            offset += HEADER + len as usize;
        }
        offset as u64
    }

    /// Flips a byte of `path` at `offset`.
    fn corrupt(path: &Path, offset: u64) {
        let mut bytes = fs::read(path).unwrap();
        bytes[offset as usize] ^= 0x5a;
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn empty_log_starts_at_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (log, replayed) = CommitLog::open(&path, 0).unwrap();
        assert!(replayed.is_empty());
        assert_eq!(log.next_lsn(), 1);
        assert_eq!(segments(&path), [segment_path(&path, 1)]);
        drop(log);
        // The empty segment is reused, not an error.
        let (log, replayed) = CommitLog::open(&path, 0).unwrap();
        assert!(replayed.is_empty());
        assert_eq!(log.next_lsn(), 1);
        assert_eq!(segments(&path).len(), 1);
    }

    #[test]
    fn applied_past_the_log_sets_the_next_lsn() {
        let dir = tempfile::tempdir().unwrap();
        let (log, replayed) = CommitLog::open(dir.path(), 41).unwrap();
        assert!(replayed.is_empty());
        assert_eq!(log.next_lsn(), 42);
        drop(fill(dir.path(), 41, SEGMENT_BYTES, 45));
        let (log, replayed) = CommitLog::open(dir.path(), 41).unwrap();
        assert_eq!(lsns(&replayed), [42, 43, 44, 45]);
        assert_eq!(log.next_lsn(), 46);
    }

    #[test]
    fn reopen_returns_the_records_in_order() {
        let dir = tempfile::tempdir().unwrap();
        drop(fill(dir.path(), 0, SEGMENT_BYTES, 10));
        let (log, replayed) = CommitLog::open(dir.path(), 0).unwrap();
        assert_eq!(lsns(&replayed), (1..=10).collect::<Vec<_>>());
        assert_eq!(log.next_lsn(), 11);
        drop(log);

        let (mut log, replayed) = CommitLog::open(dir.path(), 7).unwrap();
        assert_eq!(lsns(&replayed), [8, 9, 10]);
        assert_eq!(log.next_lsn(), 11);
        assert_eq!(log.append(&payload(11)).unwrap(), 11);
        // The first reopen started a new segment, still empty at the second, which
        // reused it.
        assert_eq!(
            segments(dir.path()),
            [segment_path(dir.path(), 1), segment_path(dir.path(), 11)]
        );
        drop(log);

        let (log, replayed) = CommitLog::open(dir.path(), 10).unwrap();
        assert_eq!(lsns(&replayed), [11]);
        assert_eq!(log.next_lsn(), 12);
    }

    #[test]
    fn empty_payload_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = CommitLog::open(dir.path(), 0).unwrap();
        assert_eq!(log.append(b"").unwrap(), 1);
        assert_eq!(log.append(b"x").unwrap(), 2);
        drop(log);
        let (_, replayed) = CommitLog::open(dir.path(), 0).unwrap();
        assert_eq!(replayed.len(), 2);
        assert!(replayed[0].payload.is_empty());
        assert_eq!(replayed[1].payload, b"x");
    }

    #[test]
    fn torn_final_frame_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        drop(fill(dir.path(), 0, SEGMENT_BYTES, 5));
        let path = segment_path(dir.path(), 1);
        let intact = frame_offset(&path, 4);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(file_len(&path) - 3).unwrap();
        drop(file);

        let (mut log, replayed) = CommitLog::open(dir.path(), 0).unwrap();
        assert_eq!(lsns(&replayed), [1, 2, 3, 4]);
        assert_eq!(file_len(&path), intact);
        assert_eq!(log.next_lsn(), 5);
        assert_eq!(log.append(&payload(5)).unwrap(), 5);
        assert_eq!(log.append(&payload(6)).unwrap(), 6);
        drop(log);

        let (log, replayed) = CommitLog::open(dir.path(), 0).unwrap();
        assert_eq!(lsns(&replayed), [1, 2, 3, 4, 5, 6]);
        assert_eq!(log.next_lsn(), 7);
    }

    #[test]
    fn half_a_frame_of_garbage_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        drop(fill(dir.path(), 0, SEGMENT_BYTES, 3));
        let path = segment_path(dir.path(), 1);
        let intact = file_len(&path);
        let mut garbage = encode(4, &payload(4)).unwrap();
        garbage.truncate(garbage.len() / 2);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&garbage).unwrap();
        drop(file);

        let (mut log, replayed) = CommitLog::open(dir.path(), 0).unwrap();
        assert_eq!(lsns(&replayed), [1, 2, 3]);
        assert_eq!(file_len(&path), intact);
        assert_eq!(log.append(&payload(4)).unwrap(), 4);
        drop(log);
        let (_, replayed) = CommitLog::open(dir.path(), 0).unwrap();
        assert_eq!(lsns(&replayed), [1, 2, 3, 4]);
    }

    #[test]
    fn only_frame_torn_reuses_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        drop(fill(dir.path(), 0, SEGMENT_BYTES, 1));
        let path = segment_path(dir.path(), 1);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(file_len(&path) - 1).unwrap();
        drop(file);

        let (mut log, replayed) = CommitLog::open(dir.path(), 0).unwrap();
        assert!(replayed.is_empty());
        assert_eq!(segments(dir.path()), [path]);
        assert_eq!(log.append(&payload(1)).unwrap(), 1);
        drop(log);
        let (_, replayed) = CommitLog::open(dir.path(), 0).unwrap();
        assert_eq!(lsns(&replayed), [1]);
    }

    #[test]
    fn corrupt_last_frame_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        drop(fill(dir.path(), 0, SEGMENT_BYTES, 4));
        let path = segment_path(dir.path(), 1);
        let last = frame_offset(&path, 3);
        corrupt(&path, file_len(&path) - 2);

        let (log, replayed) = CommitLog::open(dir.path(), 0).unwrap();
        assert_eq!(lsns(&replayed), [1, 2, 3]);
        assert_eq!(file_len(&path), last);
        assert_eq!(log.next_lsn(), 4);
    }

    #[test]
    fn bad_frame_in_the_last_segment_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        drop(fill(dir.path(), 0, SEGMENT_BYTES, 6));
        let path = segment_path(dir.path(), 1);
        let third = frame_offset(&path, 2);
        corrupt(&path, third + HEADER as u64);

        let (log, replayed) = CommitLog::open(dir.path(), 0).unwrap();
        assert_eq!(lsns(&replayed), [1, 2]);
        assert_eq!(file_len(&path), third);
        assert_eq!(log.next_lsn(), 3);
    }

    #[test]
    fn wrong_lsn_in_the_last_segment_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        drop(fill(dir.path(), 0, SEGMENT_BYTES, 2));
        let path = segment_path(dir.path(), 1);
        let intact = file_len(&path);
        // An intact frame, but of a record that is not the next one.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&encode(4, &payload(4)).unwrap()).unwrap();
        drop(file);

        let (log, replayed) = CommitLog::open(dir.path(), 0).unwrap();
        assert_eq!(lsns(&replayed), [1, 2]);
        assert_eq!(file_len(&path), intact);
        assert_eq!(log.next_lsn(), 3);
    }

    #[test]
    fn bad_frame_in_an_earlier_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        drop(fill(dir.path(), 0, SEGMENT_BYTES, 3));
        drop(fill(dir.path(), 0, SEGMENT_BYTES, 6));
        let path = segment_path(dir.path(), 1);
        let size = file_len(&path);
        // Even its last frame: the segment after it says it was complete.
        corrupt(&path, size - 1);

        let err = CommitLog::open(dir.path(), 0).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let message = err.to_string();
        let offset = frame_offset(&path, 2);
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(&format!("offset {offset}")), "{message}");
        // Nothing was cut.
        assert_eq!(file_len(&path), size);
    }

    #[test]
    fn missing_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        drop(fill(dir.path(), 0, SEGMENT_BYTES, 3));
        drop(fill(dir.path(), 0, SEGMENT_BYTES, 6));
        drop(fill(dir.path(), 0, SEGMENT_BYTES, 9));
        fs::remove_file(segment_path(dir.path(), 4)).unwrap();

        let err = CommitLog::open(dir.path(), 0).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("records 4 to 6 are missing"),
            "{err}"
        );
        // Not once they are applied.
        let (_, replayed) = CommitLog::open(dir.path(), 6).unwrap();
        assert_eq!(lsns(&replayed), [7, 8, 9]);
    }

    #[test]
    fn huge_length_is_torn() {
        let dir = tempfile::tempdir().unwrap();
        drop(fill(dir.path(), 0, SEGMENT_BYTES, 2));
        let path = segment_path(dir.path(), 1);
        let intact = file_len(&path);
        for len in [u32::MAX, 200 << 20] {
            // A header whose checksum matches: only the length gives it away.
            let mut header = Vec::new();
            header.extend_from_slice(&3u64.to_le_bytes());
            header.extend_from_slice(&len.to_le_bytes());
            header.extend_from_slice(&crc32fast::hash(&header).to_le_bytes());
            header.extend_from_slice(b"some bytes");
            let mut file = OpenOptions::new().append(true).open(&path).unwrap();
            file.write_all(&header).unwrap();
            drop(file);

            let (log, replayed) = CommitLog::open(dir.path(), 0).unwrap();
            assert_eq!(lsns(&replayed), [1, 2]);
            assert_eq!(file_len(&path), intact);
            assert_eq!(log.next_lsn(), 3);
            drop(log);
            // The new segment is empty and named 3: the next round's garbage goes to
            // the first one again, which stays the last non-empty one.
            fs::remove_file(segment_path(dir.path(), 3)).unwrap();
        }
    }

    #[test]
    fn payload_over_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = CommitLog::open(dir.path(), 0).unwrap();
        let err = log.append(&vec![0; MAX_PAYLOAD + 1]).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // Refused before anything was written: the log goes on.
        assert_eq!(log.append(b"ok").unwrap(), 1);
    }

    #[test]
    fn rotation_and_release() {
        let dir = tempfile::tempdir().unwrap();
        // Frames of 26 to 93 bytes: a new segment every second append or so.
        let mut log = fill(dir.path(), 0, 64, 20);
        let files = segments(dir.path());
        assert!(files.len() >= 5, "{files:?}");
        let firsts: Vec<u64> = list_segments(dir.path())
            .unwrap()
            .iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(firsts[0], 1);
        assert_eq!(*firsts.last().unwrap(), log.first);

        // Nothing applied, nothing released; a segment is released once the next one
        // starts at or below applied + 1.
        assert_eq!(log.release(0).unwrap(), 0);
        let applied = firsts[2] - 1;
        assert_eq!(log.release(applied).unwrap(), 2);
        assert_eq!(segments(dir.path()), files[2..]);
        assert_eq!(log.release(applied).unwrap(), 0);
        // One record short of the next boundary: nothing more.
        assert_eq!(log.release(firsts[3] - 2).unwrap(), 0);

        // Everything applied: all but the current one.
        let current = files.len() - 1;
        assert_eq!(log.release(20).unwrap(), current - 2);
        assert_eq!(segments(dir.path()), [files[current].clone()]);
        assert_eq!(log.release(u64::MAX).unwrap(), 0);
        assert_eq!(segments(dir.path()).len(), 1);
        drop(log);

        let (log, replayed) = CommitLog::open_with_segment_bytes(dir.path(), 20, 64).unwrap();
        assert!(replayed.is_empty());
        assert_eq!(log.next_lsn(), 21);
    }

    #[test]
    fn reopen_after_release_returns_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = fill(dir.path(), 0, 64, 20);
        let applied = 11;
        let released = log.release(applied).unwrap();
        assert!(released > 0);
        drop(log);

        let (mut log, replayed) =
            CommitLog::open_with_segment_bytes(dir.path(), applied, 64).unwrap();
        assert_eq!(lsns(&replayed), (12..=20).collect::<Vec<_>>());
        assert_eq!(log.next_lsn(), 21);
        assert_eq!(log.append(&payload(21)).unwrap(), 21);
        drop(log);
        let (_, replayed) = CommitLog::open_with_segment_bytes(dir.path(), 15, 64).unwrap();
        assert_eq!(lsns(&replayed), (16..=21).collect::<Vec<_>>());
    }

    #[test]
    fn reset_leaves_one_empty_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = fill(dir.path(), 0, 64, 9);
        assert!(segments(dir.path()).len() > 1);
        log.reset().unwrap();
        assert_eq!(log.next_lsn(), 10);
        assert_eq!(segments(dir.path()), [segment_path(dir.path(), 10)]);
        assert_eq!(file_len(&segment_path(dir.path(), 10)), 0);
        // Twice in a row is fine too.
        log.reset().unwrap();
        assert_eq!(segments(dir.path()), [segment_path(dir.path(), 10)]);
        drop(log);

        let (mut log, replayed) = CommitLog::open_with_segment_bytes(dir.path(), 9, 64).unwrap();
        assert!(replayed.is_empty());
        assert_eq!(log.next_lsn(), 10);
        assert_eq!(log.append(&payload(10)).unwrap(), 10);
        assert_eq!(log.append(&payload(11)).unwrap(), 11);
        drop(log);
        let (log, replayed) = CommitLog::open_with_segment_bytes(dir.path(), 9, 64).unwrap();
        assert_eq!(lsns(&replayed), [10, 11]);
        assert_eq!(log.next_lsn(), 12);
    }

    #[test]
    fn other_files_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("commit-1.log"), b"not a segment").unwrap();
        fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
        let mut log = fill(dir.path(), 0, SEGMENT_BYTES, 2);
        log.reset().unwrap();
        drop(log);
        assert!(dir.path().join("commit-1.log").exists());
        assert!(dir.path().join("notes.txt").exists());
        let (log, _) = CommitLog::open(dir.path(), 2).unwrap();
        assert_eq!(log.next_lsn(), 3);
    }

    #[test]
    fn segment_names() {
        assert_eq!(
            segment_path(Path::new("d"), 42),
            Path::new("d/commit-00000000000000000042.log")
        );
        assert_eq!(
            parse_segment_name("commit-00000000000000000042.log"),
            Some(42)
        );
        assert_eq!(parse_segment_name("commit-42.log"), None);
        assert_eq!(parse_segment_name("commit-0000000000000000004x.log"), None);
        assert_eq!(
            parse_segment_name("commit-00000000000000000042.log.tmp"),
            None
        );
    }
}
