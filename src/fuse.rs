//! The only file that uses `fuser`: mounts a `MountFs` and turns each kernel
//! request into one call on it, and each answer into a reply. Policy (what
//! exists, TTLs, errors) lives in `mountfs`; this file only translates.

use crate::mountfs::{Attr, Errno, FileKind, MountFs, Whence, DIR_TTL};
use fuser::{
    Config, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, Request, Session, SessionACL,
    SessionUnmounter,
};
use std::cell::RefCell;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

pub struct MountConfig {
    /// Let every user read the mount (`allow_other`); else only its owner.
    pub allow_other: bool,
    /// Threads serving kernel requests.
    pub threads: usize,
    /// Bypass the kernel's page cache (FOPEN_DIRECT_IO): every read comes
    /// to the daemon.
    pub direct_io: bool,
    /// Group of every file and directory (None: the mounting user's).
    pub gid: Option<u32>,
}

struct Adapter {
    fs: MountFs,
    uid: u32,
    gid: u32,
    direct_io: bool,
    open_flags: FopenFlags,
}

fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.0)
}

thread_local! {
    /// One read buffer per FUSE thread, reused: requests are up to 1 MiB.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Adapter {
    fn attr(&self, a: &Attr) -> FileAttr {
        FileAttr {
            ino: INodeNo(a.ino),
            size: a.size,
            blocks: a.blocks,
            atime: a.time,
            mtime: a.time,
            ctime: a.time,
            crtime: a.time,
            kind: match a.kind {
                FileKind::Dir => FileType::Directory,
                FileKind::Image => FileType::RegularFile,
            },
            perm: a.perm,
            nlink: a.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: a.blksize,
            flags: 0,
        }
    }
}

impl Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Images never change (a replaced manifest gets a new inode), so
        // their pages stay in the kernel's page cache across opens, and a
        // small read of a cached page never reaches us: 200,000 random
        // 32-byte reads took 1.6x the raw file's time this way, 8.6x with
        // FOPEN_DIRECT_IO, which sends every read here (docs/DESIGN.md §4).
        // Direct I/O stays an option (`--direct-io`): one copy less, so
        // faster for a single cold pass (1.4x for dd under load), if mmap
        // still works with it (Linux 6.6+).
        self.open_flags = FopenFlags::FOPEN_KEEP_CACHE;
        if self.direct_io
            && config
                .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
                .is_ok()
        {
            self.open_flags = FopenFlags::FOPEN_DIRECT_IO;
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else {
            return reply.error(fuser::Errno::ENOENT); // every name we serve is UTF-8
        };
        match self.fs.lookup(parent.0, name) {
            // Names get the short TTL even for images, so a removed dump vanishes.
            Ok(a) => reply.entry_with_ttls(&a.ttl(), &DIR_TTL, &self.attr(&a), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&a.ttl(), &self.attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        match self.fs.open(ino.0, write) {
            Ok(fh) => reply.opened(FileHandle(fh), self.open_flags),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        READ_BUF.with(|b| {
            let mut buf = b.borrow_mut();
            let size = size as usize;
            if buf.len() < size {
                buf.resize(size, 0);
            }
            match self.fs.read(fh.0, offset, &mut buf[..size]) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        // The kernel answers SEEK_SET/CUR/END itself and asks only these two.
        let whence = match whence {
            libc::SEEK_DATA => Whence::Data,
            libc::SEEK_HOLE => Whence::Hole,
            _ => return reply.error(fuser::Errno::EINVAL),
        };
        match self.fs.seek(fh.0, offset, whence) {
            Ok(pos) => reply.offset(pos as i64),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let list = match self.fs.readdir(fh.0) {
            Ok(l) => l,
            Err(e) => return reply.error(errno(e)),
        };
        // An entry's offset is the index of the next one.
        for (i, e) in list.iter().enumerate().skip(offset as usize) {
            let kind = match e.kind {
                FileKind::Dir => FileType::Directory,
                FileKind::Image => FileType::RegularFile,
            };
            if reply.add(INodeNo(e.ino), i as u64 + 1, kind, &e.name) {
                break; // the kernel's buffer is full; it asks again from there
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn flush(&self, _: &Request, _: INodeNo, _: FileHandle, _: LockOwner, reply: ReplyEmpty) {
        reply.ok(); // nothing is ever written
    }

    fn fsync(&self, _: &Request, _: INodeNo, _: FileHandle, _: bool, reply: ReplyEmpty) {
        reply.ok();
    }
    // No setattr, mknod, mkdir, unlink, rmdir, symlink, rename, link, write,
    // create or fallocate: the mount is read-only (MS_RDONLY), so the kernel
    // answers EROFS without asking.
}

/// A live mount: its session runs on its own thread until unmounted.
pub struct Mounted {
    unmounter: SessionUnmounter,
    thread: JoinHandle<io::Result<()>>,
    mountpoint: PathBuf,
    /// We unmounted or detached it: the session's end is expected.
    unmounted: bool,
}

/// How `Mounted::unmount` went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmounted {
    Clean,
    /// The mount was busy (an open file, a loop device): it is detached from
    /// the tree and the session serves its users until the last one leaves.
    Detached,
}

/// Mounts `fs` read-only on `mountpoint` and starts serving it.
pub fn mount(fs: MountFs, mountpoint: &Path, cfg: &MountConfig) -> io::Result<Mounted> {
    let mountpoint = mountpoint.canonicalize()?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoExec,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::FSName("diskdump".into()),
        // The kernel checks the mode bits and group `mount` chose.
        MountOption::DefaultPermissions,
    ];
    config.acl = if cfg.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(cfg.threads.max(1));
    // Each thread reads requests from its own /dev/fuse clone: no shared queue lock.
    config.clone_fd = true;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let gid = cfg.gid.unwrap_or(gid);
    let mut session = Session::new(
        Adapter {
            fs,
            uid,
            gid,
            direct_io: cfg.direct_io,
            open_flags: FopenFlags::FOPEN_KEEP_CACHE,
        },
        &mountpoint,
        &config,
    )?;
    // Taken before the session moves to its thread: `spawn_mount` would move
    // the mount into a BackgroundSession that cannot detach a busy mount.
    let unmounter = session.unmount_callable();
    let thread = std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || session.run())?;
    Ok(Mounted {
        unmounter,
        thread,
        mountpoint,
        unmounted: false,
    })
}

impl Mounted {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// True once the session is over (unmounted, also by someone else).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Sets the kernel's read-ahead for this mount (its bdi), which FUSE
    /// otherwise caps at 128 KiB: larger reads mean fewer round trips.
    pub fn set_read_ahead_kb(&self, kb: u32) -> io::Result<()> {
        let dev = std::fs::metadata(&self.mountpoint)?.dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
        std::fs::write(&path, format!("{kb}\n"))
            .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
    }

    /// Unmounts; if the mount is busy, detaches it instead (MNT_DETACH).
    pub fn unmount(&mut self) -> io::Result<Unmounted> {
        self.unmounted = true;
        match self.unmounter.unmount() {
            Ok(()) => Ok(Unmounted::Clean),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                let path = CString::new(self.mountpoint.as_os_str().as_bytes())?;
                // SAFETY: a valid NUL-terminated path.
                if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(Unmounted::Detached)
            }
            Err(e) => Err(e),
        }
    }

    /// Waits for the session to end (after an unmount, or the last user of
    /// a detached mount leaving).
    pub fn join(self) -> io::Result<()> {
        let r = self
            .thread
            .join()
            .map_err(|_| io::Error::other("the FUSE session thread panicked"))?;
        match r {
            // When the last user of a mount we detached leaves, a reading
            // thread may see the connection's teardown as ECONNABORTED
            // rather than ENODEV (seen once on kernel 6.18): the end we asked for.
            Err(e) if self.unmounted && e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
            r => r,
        }
    }
}
