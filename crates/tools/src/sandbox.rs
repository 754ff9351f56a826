//! The OS sandbox of the `shell` and `python` tools (Linux). What the kernel offers is probed
//! once ([`sandbox_level`]). For each run the parent prepares everything that allocates or can
//! fail in complicated ways — the Landlock ruleset (a file descriptor), the seccomp BPF program,
//! the resource limits — and the child, between fork and exec, only makes raw system calls on
//! that data ([`Prepared::apply`]), which is what async-signal safety demands there.
//!
//! The layers: Landlock lets the program read and execute everywhere but write only inside the
//! workspace (and `/dev/null`), denies TCP bind/connect (ABI 4) and signals or abstract Unix
//! sockets reaching outside the sandbox (ABI 6). seccomp refuses sockets other than Unix ones,
//! io_uring (which can open sockets without `socket()`), and `setsid`/`setpgid`, so every
//! descendant stays in the process group that is killed when the call ends. Resource limits
//! bound CPU time, address space, file size, processes and open files. Capabilities are
//! dropped and `no_new_privs` is set, so nothing regains privileges across `exec`. A layer the
//! kernel lacks is left out and the [`SandboxLevel`] says so; a layer it has that fails to
//! apply fails the spawn instead of running the program with less protection.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::OnceLock;

/// Resource limits of one run. CPU time gets a soft limit (SIGXCPU) one second before the hard
/// one (SIGKILL); the others are hard limits. Values above the parent's own hard limits are
/// lowered to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub cpu_seconds: u64,
    /// Bytes of virtual address space (runtimes reserve far more than they touch).
    pub address_space: u64,
    /// Largest file the program may write, in bytes.
    pub file_size: u64,
    /// Processes and threads the run may add to those its user already has: the kernel counts
    /// every task of the real user, and does not apply this limit to root at all.
    pub processes: u64,
    pub open_files: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            cpu_seconds: 60,
            address_space: 2 << 30,
            file_size: 256 << 20,
            processes: 128,
            open_files: 256,
        }
    }
}

/// How programs are run. The default takes PATH, LANG, LC_ALL and TZ from this process's
/// environment; nothing else passes, whatever `env` holds.
#[derive(Clone)]
pub struct SandboxConfig {
    pub limits: Limits,
    /// The environment the passed variables are taken from.
    pub env: Vec<(OsString, OsString)>,
    /// Use Landlock where the kernel has it (off only to compare, or for a program that needs
    /// to write elsewhere).
    pub landlock: bool,
    /// Use seccomp where the kernel has it (off only to compare, or for a program that needs
    /// netlink or its own session).
    pub seccomp: bool,
}

impl Default for SandboxConfig {
    fn default() -> SandboxConfig {
        SandboxConfig {
            limits: Limits::default(),
            env: std::env::vars_os()
                .filter(|(k, _)| PASSED_ENV.iter().any(|p| k == p))
                .collect(),
            landlock: true,
            seccomp: true,
        }
    }
}

/// Names only: `env` may hold secrets.
impl fmt::Debug for SandboxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxConfig")
            .field("limits", &self.limits)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("landlock", &self.landlock)
            .field("seccomp", &self.seccomp)
            .finish()
    }
}

/// Variables a program gets from [`SandboxConfig::env`]; HOME and TMPDIR are set to the
/// workspace. An allow-list, so API keys and tokens never pass, whatever they are called.
const PASSED_ENV: [&str; 4] = ["PATH", "LANG", "LC_ALL", "TZ"];

impl SandboxConfig {
    /// The protection runs get: the kernel's, less the layers turned off.
    pub fn level(&self) -> SandboxLevel {
        let k = sandbox_level();
        SandboxLevel {
            landlock: k.landlock.filter(|_| self.landlock),
            seccomp: k.seccomp && self.seccomp,
            root: k.root,
        }
    }

    /// The whole environment of a program run in `workspace` (whose `.tmp` is TMPDIR).
    pub fn child_env(&self, workspace: &Path) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = self
            .env
            .iter()
            .filter(|(k, _)| PASSED_ENV.iter().any(|p| k == p))
            .cloned()
            .collect();
        for (k, v) in [
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("LANG", "C.UTF-8"),
        ] {
            if !env.iter().any(|(n, _)| n == k) {
                env.push((k.into(), v.into()));
            }
        }
        env.push(("HOME".into(), workspace.into()));
        env.push(("TMPDIR".into(), workspace.join(".tmp").into()));
        env
    }
}

/// The protection in force for a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLevel {
    /// The Landlock ABI used (file system from 1, TCP bind/connect from 4, signal and
    /// abstract-socket scoping from 6), capped at the newest one this code knows.
    pub landlock: Option<u32>,
    /// seccomp: non-Unix sockets, io_uring, setsid and setpgid refused.
    pub seccomp: bool,
    /// Running as root: capabilities are dropped, but the kernel exempts root from the
    /// process-count limit.
    pub root: bool,
}

impl fmt::Display for SandboxLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(abi) = self.landlock {
            parts.push(format!("landlock(abi {abi})"));
        }
        if self.seccomp {
            parts.push("seccomp".into());
        }
        parts.push("rlimits".into());
        let mut gaps = Vec::new();
        if self.landlock.is_none() {
            gaps.push("writes are not confined to the workspace");
        }
        match (self.seccomp, self.landlock.is_some_and(|a| a >= 4)) {
            (false, false) => gaps.push("network is not blocked"),
            (false, true) => gaps.push("only TCP is blocked"),
            _ => {}
        }
        if self.root {
            gaps.push("root: capabilities dropped, process count not limited");
        }
        write!(f, "{}", parts.join("+"))?;
        if self.landlock.is_none() && !self.seccomp {
            write!(f, " only")?;
        }
        if !gaps.is_empty() {
            write!(f, " ({})", gaps.join("; "))?;
        }
        Ok(())
    }
}

/// What this kernel offers, probed once (the CLI prints it).
pub fn sandbox_level() -> SandboxLevel {
    static LEVEL: OnceLock<SandboxLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| SandboxLevel {
        landlock: landlock_abi(),
        seccomp: seccomp_available(),
        // SAFETY: getuid has no preconditions.
        root: unsafe { libc::getuid() } == 0,
    })
}

// Landlock's user-space ABI (linux/landlock.h), which the libc crate does not carry.
const LANDLOCK_KNOWN_ABI: u32 = 7;
const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
const LANDLOCK_RULE_PATH_BENEATH: u32 = 1;
const FS_EXECUTE: u64 = 1 << 0;
const FS_WRITE_FILE: u64 = 1 << 1;
const FS_READ_FILE: u64 = 1 << 2;
const FS_READ_DIR: u64 = 1 << 3;
const FS_TRUNCATE: u64 = 1 << 14;
const FS_IOCTL_DEV: u64 = 1 << 15;
const NET_BIND_TCP: u64 = 1 << 0;
const NET_CONNECT_TCP: u64 = 1 << 1;
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

fn landlock_abi() -> Option<u32> {
    // SAFETY: the version query reads no memory (NULL attribute, size 0).
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (v > 0).then(|| (v as u32).min(LANDLOCK_KNOWN_ABI))
}

/// Every file-system right the ABI can handle: REFER came with 2, TRUNCATE with 3, IOCTL_DEV
/// with 5.
fn fs_rights(abi: u32) -> u64 {
    let bits = match abi {
        1 => 13,
        2 => 14,
        3 | 4 => 15,
        _ => 16,
    };
    (1 << bits) - 1
}

/// The ruleset: everything handled, read and execute allowed beneath `/`, everything beneath
/// the workspace, writing to `/dev/null`; no network rule, so TCP bind and connect are denied.
fn landlock_ruleset(abi: u32, workspace: &Path) -> io::Result<OwnedFd> {
    let fs = fs_rights(abi);
    // Fields an older ABI does not know must be zero; the kernel accepts the larger struct then.
    let attr = RulesetAttr {
        handled_access_fs: fs,
        handled_access_net: if abi >= 4 {
            NET_BIND_TCP | NET_CONNECT_TCP
        } else {
            0
        },
        scoped: if abi >= 6 {
            SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        } else {
            0
        },
    };
    // SAFETY: attr is a live, correctly sized landlock_ruleset_attr.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor (close-on-exec) that nothing else owns.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    allow(
        &ruleset,
        Path::new("/"),
        FS_READ_FILE | FS_READ_DIR | FS_EXECUTE,
    )?;
    allow(&ruleset, workspace, fs)?;
    // Shells open /dev/null with O_TRUNC for `> /dev/null`.
    let null = FS_READ_FILE | FS_WRITE_FILE | ((FS_TRUNCATE | FS_IOCTL_DEV) & fs);
    allow(&ruleset, Path::new("/dev/null"), null)?;
    Ok(ruleset)
}

fn allow(ruleset: &OwnedFd, path: &Path, access: u64) -> io::Result<()> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let attr = PathBeneathAttr {
        allowed_access: access,
        parent_fd: file.as_raw_fd(),
    };
    // SAFETY: both descriptors are open and attr is a live landlock_path_beneath_attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            LANDLOCK_RULE_PATH_BENEATH,
            &attr as *const PathBeneathAttr,
            0u32,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: Option<u32> = Some(0xC000_003E);
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: Option<u32> = Some(0xC000_00B7);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const AUDIT_ARCH: Option<u32> = None;

fn seccomp_available() -> bool {
    AUDIT_ARCH.is_some()
        && [libc::SECCOMP_RET_ERRNO, libc::SECCOMP_RET_KILL_PROCESS]
            .iter()
            .all(|action| {
                // SAFETY: the query only reads the u32 it is given.
                unsafe {
                    libc::syscall(
                        libc::SYS_seccomp,
                        libc::SECCOMP_GET_ACTION_AVAIL,
                        0u32,
                        action as *const u32,
                    ) == 0
                }
            })
}

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: usize, jf: usize) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: jt as u8,
        jf: jf as u8,
        k,
    }
}

/// The BPF program: another architecture's system calls kill the process (their numbers mean
/// other things); socket() is allowed for AF_UNIX only (EACCES otherwise); the calls in
/// `denied` get EPERM; everything else is allowed. AF_NETLINK is refused too: it reaches no
/// network, but as root it configures interfaces, routes and firewalls.
fn seccomp_program(arch: u32) -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let denied = [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_setsid,
        libc::SYS_setpgid,
    ];
    let ld = |off: usize| stmt(BPF_LD | BPF_W | BPF_ABS, off as u32);
    let ret = |k: u32| stmt(BPF_RET | BPF_K, k);
    let arg0 =
        offset_of!(libc::seccomp_data, args) + if cfg!(target_endian = "big") { 4 } else { 0 };
    let mut p = vec![
        ld(offset_of!(libc::seccomp_data, arch)),
        jump(BPF_JMP | BPF_JEQ | BPF_K, arch, 1, 0),
        ret(libc::SECCOMP_RET_KILL_PROCESS),
        ld(offset_of!(libc::seccomp_data, nr)),
    ];
    let x32 = cfg!(target_arch = "x86_64");
    // Layout after the checks: allow, then the socket test (load, compare, allow, EACCES),
    // then EPERM. Jump offsets count instructions after the jump.
    let allow = p.len() + usize::from(x32) + 1 + denied.len();
    let (socket, eperm) = (allow + 1, allow + 5);
    if x32 {
        // x32 system calls are x86_64's with bit 30 set; none are needed.
        p.push(jump(
            BPF_JMP | BPF_JGE | BPF_K,
            0x4000_0000,
            eperm - p.len() - 1,
            0,
        ));
    }
    p.push(jump(
        BPF_JMP | BPF_JEQ | BPF_K,
        libc::SYS_socket as u32,
        socket - p.len() - 1,
        0,
    ));
    for nr in denied {
        p.push(jump(
            BPF_JMP | BPF_JEQ | BPF_K,
            nr as u32,
            eperm - p.len() - 1,
            0,
        ));
    }
    p.push(ret(libc::SECCOMP_RET_ALLOW));
    p.push(ld(arg0));
    p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, libc::AF_UNIX as u32, 0, 1));
    p.push(ret(libc::SECCOMP_RET_ALLOW));
    p.push(ret(libc::SECCOMP_RET_ERRNO | libc::EACCES as u32));
    p.push(ret(libc::SECCOMP_RET_ERRNO | libc::EPERM as u32));
    p
}

/// Tasks on the system now (the fourth field of /proc/loadavg is running/total): an upper
/// bound of the user's own, which RLIMIT_NPROC counts against.
fn system_tasks() -> u64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().nth(3)?.split('/').nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Everything a child applies to itself before exec, prepared by the parent.
pub(crate) struct Prepared {
    ruleset: Option<OwnedFd>,
    filter: Option<Vec<libc::sock_filter>>,
    rlimits: Vec<(i32, libc::rlimit)>,
}

impl Prepared {
    pub(crate) fn new(
        cfg: &SandboxConfig,
        level: SandboxLevel,
        workspace: &Path,
    ) -> io::Result<Prepared> {
        let ruleset = level
            .landlock
            .map(|abi| landlock_ruleset(abi, workspace))
            .transpose()?;
        let filter = AUDIT_ARCH.filter(|_| level.seccomp).map(seccomp_program);
        let l = &cfg.limits;
        let rlimits = [
            (
                libc::RLIMIT_CPU,
                l.cpu_seconds,
                l.cpu_seconds.saturating_add(1),
            ),
            (libc::RLIMIT_AS, l.address_space, l.address_space),
            (libc::RLIMIT_FSIZE, l.file_size, l.file_size),
            (libc::RLIMIT_NOFILE, l.open_files, l.open_files),
            (libc::RLIMIT_CORE, 0, 0),
            {
                let n = system_tasks().saturating_add(l.processes);
                (libc::RLIMIT_NPROC, n, n)
            },
        ]
        .into_iter()
        .map(|(resource, soft, hard)| {
            let mut now = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            // SAFETY: getrlimit writes one rlimit into `now`. On failure `now` stays infinite.
            unsafe { libc::getrlimit(resource, &mut now) };
            let lim = libc::rlimit {
                rlim_cur: soft.min(now.rlim_max),
                rlim_max: hard.min(now.rlim_max),
            };
            (resource as i32, lim)
        })
        .collect();
        Ok(Prepared {
            ruleset,
            filter,
            rlimits,
        })
    }

    /// Runs in the child between fork and exec: system calls only, no allocation, no locks.
    /// Limits first; capabilities dropped before `no_new_privs` (the bounding-set drop needs
    /// CAP_SETPCAP); Landlock and seccomp last, as both require `no_new_privs`.
    pub(crate) fn apply(&self) -> io::Result<()> {
        let check = |r: libc::c_long| {
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        for (resource, lim) in &self.rlimits {
            // SAFETY: setrlimit reads the rlimit it is given.
            check(unsafe { libc::setrlimit(*resource as _, lim) }.into())?;
        }
        for cap in 0..64 {
            // SAFETY: plain prctl. EINVAL past the last capability and EPERM without
            // CAP_SETPCAP are expected: emptying the sets below under no_new_privs is what
            // keeps capabilities away after exec, even for root.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        }
        let header = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        let none = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        // SAFETY: capset reads the header and two data structs (version 3).
        check(unsafe {
            libc::syscall(libc::SYS_capset, &header as *const CapHeader, none.as_ptr())
        })?;
        // SAFETY: plain prctl.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }.into())?;
        if let Some(ruleset) = &self.ruleset {
            // SAFETY: the ruleset descriptor is open (inherited across fork).
            check(unsafe {
                libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32)
            })?;
        }
        if let Some(filter) = &self.filter {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: prog points at the program, which outlives the call; the kernel copies it.
            check(unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0u32,
                    &prog as *const libc::sock_fprog,
                )
            })?;
        }
        Ok(())
    }
}
