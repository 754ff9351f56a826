//! The `shell` and `python` tools: a program run in the task's workspace under the OS sandbox
//! ([`crate::sandbox`]) with a scrubbed environment, stdout and stderr captured as head and
//! tail, the exit status reported (a failing program is a result, not a tool error), and its
//! whole process group killed when the program ends — background jobs do not outlive the call —
//! or when the call times out or is cancelled (the registry drops this future).

use std::collections::VecDeque;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::sandbox::{Prepared, SandboxConfig};
use crate::{BoxFuture, Tool, ToolContext, ToolError, ToolOutput, str_arg};

const MAX_COMMAND: u64 = 4000;
const MAX_CODE: u64 = 20_000;
/// Room in the output cap for the status line and the section headers.
const FRAME: usize = 200;

/// `shell`: `/bin/sh -c COMMAND`.
#[derive(Debug, Clone, Default)]
pub struct Shell(pub SandboxConfig);

/// `python`: the code written to `.tmp/` in the workspace and run with `python3 -I`
/// (isolated: no user site, no PYTHON* variables), so tracebacks show the failing line.
#[derive(Debug, Clone, Default)]
pub struct Python(pub SandboxConfig);

impl Tool for Shell {
    fn name(&self) -> &str {
        "shell"
    }
    fn description(&self) -> &str {
        "Run a shell command (/bin/sh) in the workspace and get its exit code, stdout and stderr. \
         No network; files can be written only inside the workspace. Example: {\"command\": \"wc -l data.csv\"}"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"command": {"type": "string", "maxLength": MAX_COMMAND}},
               "required": ["command"], "additionalProperties": false})
    }
    fn call<'a>(
        &'a self,
        args: Value,
        ctx: &'a ToolContext,
    ) -> BoxFuture<'a, Result<ToolOutput, ToolError>> {
        Box::pin(async move {
            let command = str_arg(&args, "command")?;
            let ws = workspace(ctx)?;
            // TMPDIR must exist.
            tmp_dir(&ws).map_err(|e| ToolError::Failed(format!("the workspace's .tmp/: {e}")))?;
            run(
                &self.0,
                ctx,
                &ws,
                "/bin/sh",
                &["-c".as_ref(), command.as_ref()],
            )
            .await
        })
    }
}

impl Tool for Python {
    fn name(&self) -> &str {
        "python"
    }
    fn description(&self) -> &str {
        "Run a Python 3 program in the workspace and get its exit code, stdout and stderr (print what you need). \
         No network; files can be written only inside the workspace. Example: {\"code\": \"import csv\\nrows = list(csv.reader(open('data.csv')))\\nprint(len(rows))\"}"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"code": {"type": "string", "maxLength": MAX_CODE}},
               "required": ["code"], "additionalProperties": false})
    }
    fn call<'a>(
        &'a self,
        args: Value,
        ctx: &'a ToolContext,
    ) -> BoxFuture<'a, Result<ToolOutput, ToolError>> {
        Box::pin(async move {
            let code = str_arg(&args, "code")?;
            let ws = workspace(ctx)?;
            let script = Script::write(&ws, code).map_err(|e| {
                ToolError::Failed(format!("cannot write the program to .tmp/: {e}"))
            })?;
            run(
                &self.0,
                ctx,
                &ws,
                "python3",
                &["-I".as_ref(), script.path.as_os_str()],
            )
            .await
        })
    }
}

fn workspace(ctx: &ToolContext) -> Result<PathBuf, ToolError> {
    ctx.workspace
        .canonicalize()
        .map_err(|e| ToolError::Failed(format!("the workspace {}: {e}", ctx.workspace.display())))
}

/// The workspace's `.tmp` (TMPDIR of the programs), opened without following a symlink: an
/// earlier run may have replaced it with a link to anywhere, and the parent is not sandboxed.
fn tmp_dir(ws: &Path) -> io::Result<OwnedFd> {
    let root = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(ws)?;
    let name = c".tmp";
    // SAFETY: a live directory descriptor and a NUL-terminated name.
    if unsafe { libc::mkdirat(root.as_raw_fd(), name.as_ptr(), 0o700) } != 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(e);
        }
    }
    let flags = libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_RDONLY;
    openat(&root, name, flags, 0)
}

fn openat(dir: &impl AsRawFd, name: &CStr, flags: i32, mode: libc::c_uint) -> io::Result<OwnedFd> {
    // SAFETY: a live directory descriptor and a NUL-terminated name.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The program of a `python` call; removed when dropped.
struct Script {
    dir: OwnedFd,
    name: CString,
    path: PathBuf,
}

impl Script {
    fn write(ws: &Path, code: &str) -> io::Result<Script> {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let dir = tmp_dir(ws)?;
        let name = format!(
            "run-{}-{}.py",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        let cname = CString::new(name.clone()).map_err(io::Error::other)?;
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let fd = openat(&dir, &cname, flags, 0o600)?;
        File::from(fd).write_all(code.as_bytes())?;
        Ok(Script {
            dir,
            name: cname,
            path: ws.join(".tmp").join(name),
        })
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        // SAFETY: a live directory descriptor and a NUL-terminated name.
        unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.name.as_ptr(), 0) };
    }
}

/// Kills the process group (led by the child, so its pid) unless already done: dropped with
/// the call's future, it ends everything the program started.
struct Group(Option<u32>);

impl Group {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: plain kill; a group that is already gone gives ESRCH.
            unsafe { libc::kill(-(pgid as libc::pid_t), libc::SIGKILL) };
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn run(
    cfg: &SandboxConfig,
    ctx: &ToolContext,
    ws: &Path,
    program: &str,
    args: &[&OsStr],
) -> Result<ToolOutput, ToolError> {
    let level = cfg.level();
    let prepared = Prepared::new(cfg, level, ws)
        .map_err(|e| ToolError::Failed(format!("cannot set up the sandbox: {e}")))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(ws)
        .env_clear()
        .envs(cfg.child_env(ws))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    // SAFETY: `apply` only makes system calls on data prepared above: no allocation, no locks.
    unsafe { cmd.pre_exec(move || prepared.apply()) };
    let mut child = cmd
        .spawn()
        .map_err(|e| ToolError::Failed(format!("cannot start {program}: {e}")))?;
    // Closes the Landlock ruleset now that the child has it.
    drop(cmd);
    let mut group = Group(child.id());
    let half = ctx.max_output.saturating_sub(FRAME) / 4;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (status, out, err) = tokio::join!(
        async {
            let status = child.wait().await;
            // What the program left running would keep the pipes open.
            group.kill();
            status
        },
        capture(stdout, half),
        capture(stderr, half),
    );
    let status = status.map_err(|e| ToolError::Failed(format!("waiting for {program}: {e}")))?;
    let mut text = format!("[{} | sandbox: {level}]", describe(status));
    for (name, stream) in [("stdout", &out), ("stderr", &err)] {
        if stream.total > 0 {
            let s = stream.render();
            text.push_str(&format!(
                "\n{name}:\n{}",
                s.strip_suffix('\n').unwrap_or(&s)
            ));
        }
    }
    if out.total == 0 && err.total == 0 {
        text.push_str("\n(no output)");
    }
    Ok(ToolOutput::text(text))
}

fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    let Some(sig) = status.signal() else {
        return "exit status unknown".into();
    };
    let why = match sig {
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGXCPU => " (SIGXCPU: CPU time limit)",
        libc::SIGXFSZ => " (SIGXFSZ: file size limit)",
        libc::SIGSYS => " (SIGSYS: system call refused by the sandbox)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGABRT => " (SIGABRT)",
        _ => "",
    };
    format!("killed by signal {sig}{why}")
}

/// The first and last `half` bytes of a stream and how long it was, so unbounded output needs
/// bounded memory.
struct HeadTail {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: usize,
    half: usize,
}

impl HeadTail {
    fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len();
        let (h, rest) = bytes.split_at(self.half.saturating_sub(self.head.len()).min(bytes.len()));
        self.head.extend_from_slice(h);
        self.tail.extend(rest);
        let excess = self.tail.len().saturating_sub(self.half);
        self.tail.drain(..excess);
    }

    /// As [`crate::head_tail`] renders it (invalid UTF-8 replaced).
    fn render(&self) -> String {
        let kept = self.head.len() + self.tail.len();
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        if kept == self.total {
            // Whole: joined before decoding, so no character is split at the seam.
            return String::from_utf8_lossy(&[&self.head[..], &tail].concat()).into_owned();
        }
        format!(
            "{}\n[... {} bytes left out ...]\n{}",
            String::from_utf8_lossy(&self.head),
            self.total - kept,
            String::from_utf8_lossy(&tail)
        )
    }
}

async fn capture(pipe: Option<impl AsyncRead + Unpin>, half: usize) -> HeadTail {
    let mut ht = HeadTail {
        head: Vec::new(),
        tail: VecDeque::new(),
        total: 0,
        half,
    };
    if let Some(mut pipe) = pipe {
        let mut buf = [0u8; 8192];
        // A read error ends the stream like EOF: the exit status still tells what happened.
        while let Ok(n @ 1..) = pipe.read(&mut buf).await {
            ht.push(&buf[..n]);
        }
    }
    ht
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limits, ToolRegistry, sandbox_level};
    use std::ffi::OsString;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn registry(cfg: SandboxConfig) -> ToolRegistry {
        let mut reg = ToolRegistry::new();
        reg.add(Arc::new(Shell(cfg.clone())));
        reg.add(Arc::new(Python(cfg)));
        reg
    }

    /// The tool's result text, or the error as text.
    async fn run(reg: &ToolRegistry, ctx: &ToolContext, tool: &str, input: &str) -> String {
        let key = if tool == "shell" { "command" } else { "code" };
        match reg.call(tool, json!({ key: input }), ctx).await {
            Ok(out) => out.content,
            Err(e) => format!("error: {e}"),
        }
    }

    /// Each case: the tool, its input, and strings the result must contain ("!x": must not).
    async fn check(reg: &ToolRegistry, ctx: &ToolContext, cases: &[(&str, String, &[&str])]) {
        for (tool, input, expect) in cases {
            let out = run(reg, ctx, tool, input).await;
            for e in *expect {
                match e.strip_prefix('!') {
                    Some(absent) => assert!(!out.contains(absent), "{tool} {input:?}: {out}"),
                    None => assert!(out.contains(e), "{tool} {input:?}: wanted {e:?} in\n{out}"),
                }
            }
        }
    }

    /// Landlock as the kernel reports it, asked directly rather than through the code under test.
    fn kernel_landlock_abi() -> i64 {
        unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<u8>(),
                0usize,
                1u32,
            )
        }
    }

    /// Whether the tests that need the whole sandbox can run; says so loudly when not.
    fn full_sandbox(test: &str) -> bool {
        // Asked of the kernel directly: a wrong level must not turn the tests off.
        let seccomp = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } >= 0;
        let ok = kernel_landlock_abi() >= 4 && seccomp;
        if !ok {
            eprintln!("SKIPPED {test}: this kernel gives only {}", sandbox_level());
        }
        ok
    }

    /// Gone: no such process, or a zombie waiting to be reaped.
    fn gone(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .unwrap()
                .trim_start()
                .starts_with('Z'),
        }
    }

    fn wait_gone(pid: &str) {
        let t = Instant::now();
        while !gone(pid) {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "process {pid} still runs"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn read_pid(path: &Path) -> String {
        let t = Instant::now();
        loop {
            if let Ok(s) = std::fs::read_to_string(path)
                && s.ends_with('\n')
            {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{} never written",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn sandbox_level_matches_the_kernel() {
        let level = sandbox_level();
        let abi = kernel_landlock_abi();
        println!("sandbox: {level}");
        if abi > 0 {
            assert_eq!(level.landlock, Some((abi as u32).min(7)), "{level}");
            assert!(level.to_string().starts_with("landlock(abi "), "{level}");
        } else {
            assert_eq!(level.landlock, None);
            assert!(
                level.to_string().contains("writes are not confined"),
                "{level}"
            );
        }
        // seccomp filters exist where PR_GET_SECCOMP does (this code knows two architectures).
        let seccomp = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } >= 0;
        if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            assert_eq!(level.seccomp, seccomp, "{level}");
        }
        assert_eq!(level.root, unsafe { libc::getuid() } == 0);
        if level.root {
            assert!(level.to_string().contains("process count not limited"));
        }
        let off = SandboxConfig {
            landlock: false,
            seccomp: false,
            ..SandboxConfig::default()
        };
        assert!(
            off.level()
                .to_string()
                .starts_with("rlimits only (writes are not confined")
        );
    }

    #[test]
    fn writes_stay_inside_the_workspace() {
        if !full_sandbox("writes_stay_inside_the_workspace") {
            return;
        }
        let ws = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let out = outside.path().display().to_string();
        // Writable for this process, so a refusal below is the sandbox's.
        std::fs::write(outside.path().join("existing"), "keep").unwrap();
        let ctx = ToolContext::new(ws.path());
        let reg = registry(SandboxConfig::default());
        let tmp = ws.path().canonicalize().unwrap().join(".tmp");
        let s = |c: &str| c.replace("OUT", &out);
        rt().block_on(check(
            &reg,
            &ctx,
            &[
                (
                    "shell",
                    s("echo x > OUT/outside"),
                    &["exit code 2", "Permission denied"],
                ),
                ("shell", s("mkdir OUT/dir"), &["Permission denied"]),
                ("shell", s("rm -f OUT/existing"), &["Permission denied"]),
                (
                    "shell",
                    s("echo hi > inside.txt && cat inside.txt"),
                    &["exit code 0", "hi"],
                ),
                (
                    "shell",
                    "echo x > /dev/null && echo null-ok".into(),
                    &["null-ok"],
                ),
                (
                    "shell",
                    "mkdir -p a/b && mv inside.txt a/b/ && ls a/b".into(),
                    &["inside.txt"],
                ),
                (
                    "python",
                    s("open('OUT/outside', 'w').write('x')"),
                    &["exit code 1", "PermissionError"],
                ),
                (
                    "python",
                    "open('py.txt', 'w').write('from python')\nprint(open('py.txt').read())".into(),
                    &["from python"],
                ),
                (
                    "python",
                    "import tempfile\nprint(tempfile.mkstemp()[1])".into(),
                    &[tmp.to_str().unwrap()],
                ),
                (
                    "python",
                    "print(len(open('/etc/passwd').read()) > 0)".into(),
                    &["True"],
                ),
            ],
        ));
        assert!(!outside.path().join("outside").exists());
        assert!(!outside.path().join("dir").exists());
        assert_eq!(
            std::fs::read_to_string(outside.path().join("existing")).unwrap(),
            "keep"
        );
        assert_eq!(
            std::fs::read_to_string(ws.path().join("a/b/inside.txt")).unwrap(),
            "hi\n"
        );
        assert_eq!(
            std::fs::read_to_string(ws.path().join("py.txt")).unwrap(),
            "from python"
        );
    }

    #[test]
    fn network_is_refused() {
        if !full_sandbox("network_is_refused") {
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let connect = format!(
            "import socket\ns = socket.socket()\nprint('socket made')\ns.connect(('127.0.0.1', {port}))\nprint('connected')"
        );
        // The control: unsandboxed, the same program reaches the listener.
        let control = std::process::Command::new("python3")
            .args(["-c", &connect])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&control.stdout).contains("connected"),
            "{control:?}"
        );
        assert!(
            listener.accept().is_ok(),
            "the control connection should be waiting"
        );

        let ws = tempfile::tempdir().unwrap();
        let ctx = ToolContext::new(ws.path());
        let udp = "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)".to_string();
        let unix = "import asyncio, socket\na, b = socket.socketpair()\nasyncio.run(asyncio.sleep(0))\nprint('unix ok')"
            .to_string();
        let netlink =
            "import socket\nsocket.socket(socket.AF_NETLINK, socket.SOCK_RAW)".to_string();
        rt().block_on(async {
            // Everything on: seccomp refuses the socket itself.
            let reg = registry(SandboxConfig::default());
            check(
                &reg,
                &ctx,
                &[
                    (
                        "python",
                        connect.clone(),
                        &["PermissionError", "!socket made", "!connected"],
                    ),
                    ("python", udp.clone(), &["PermissionError"]),
                    ("python", netlink, &["PermissionError"]),
                    ("python", unix, &["unix ok"]),
                ],
            )
            .await;
            // Landlock alone: the socket is made, the connection refused.
            let reg = registry(SandboxConfig {
                seccomp: false,
                ..SandboxConfig::default()
            });
            check(
                &reg,
                &ctx,
                &[(
                    "python",
                    connect.clone(),
                    &["socket made", "PermissionError", "!connected"],
                )],
            )
            .await;
            // seccomp alone refuses the socket.
            let reg = registry(SandboxConfig {
                landlock: false,
                ..SandboxConfig::default()
            });
            check(
                &reg,
                &ctx,
                &[(
                    "python",
                    connect.clone(),
                    &["PermissionError", "!socket made"],
                )],
            )
            .await;
        });
        let e = listener.accept().unwrap_err();
        assert_eq!(
            e.kind(),
            io::ErrorKind::WouldBlock,
            "a sandboxed program got through"
        );
    }

    #[test]
    fn environment_is_scrubbed() {
        let ws = tempfile::tempdir().unwrap();
        let root = ws.path().canonicalize().unwrap().display().to_string();
        let ctx = ToolContext::new(ws.path());
        let secrets = [
            ("OPENAI_API_KEY", "sk-fake-openai"),
            ("AUTOGLM_API_KEY", "fake-autoglm-key"),
            ("AWS_SECRET_ACCESS_KEY", "fake-aws-secret"),
            ("GITHUB_TOKEN", "fake-github-token"),
            ("DB_PASSWORD", "fake-db-password"),
            ("LD_PRELOAD", "/fake/preload.so"),
        ];
        let mut env: Vec<(OsString, OsString)> =
            secrets.iter().map(|(k, v)| (k.into(), v.into())).collect();
        env.push(("PATH".into(), std::env::var_os("PATH").unwrap()));
        env.push(("LANG".into(), "C.UTF-8".into()));
        let reg = registry(SandboxConfig {
            env,
            ..SandboxConfig::default()
        });
        let python_env = "import os\nfor k, v in os.environ.items(): print(f'{k}={v}')";
        rt().block_on(async {
            for (tool, input) in [("shell", "env"), ("python", python_env)] {
                let out = run(&reg, &ctx, tool, input).await;
                for (k, v) in secrets {
                    assert!(!out.contains(k) && !out.contains(v), "{k} passed:\n{out}");
                }
                assert!(out.contains(&format!("HOME={root}\n")), "{out}");
                assert!(out.contains(&format!("TMPDIR={root}/.tmp\n")), "{out}");
                assert!(out.contains("LANG=C.UTF-8"), "{out}");
            }
            // From this process's real environment only the allowed names pass (the shell,
            // not python: a launcher such as pyenv's shim adds variables of its own).
            let reg = registry(SandboxConfig::default());
            let out = run(&reg, &ctx, "shell", "env").await;
            let names: Vec<&str> = out
                .lines()
                .skip(2)
                .filter_map(|l| Some(l.split_once('=')?.0))
                .collect();
            assert!(names.contains(&"PATH"), "{out}");
            for n in names {
                let ok = ["PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR", "PWD"].contains(&n);
                assert!(ok, "{n} passed:\n{out}");
            }
            // Nor can the program read them from this process through /proc: Landlock keeps
            // it from reaching outside its domain, and as root nothing else would.
            if full_sandbox("environment_is_scrubbed (/proc)") {
                let environ = format!("/proc/{}/environ", std::process::id());
                let control = std::process::Command::new("cat")
                    .arg(&environ)
                    .output()
                    .unwrap();
                assert!(control.status.success() && !control.stdout.is_empty());
                check(
                    &reg,
                    &ctx,
                    &[(
                        "shell",
                        format!("cat {environ}"),
                        &["Permission denied", "!PATH="],
                    )],
                )
                .await;
            }
        });
    }

    #[test]
    fn timeout_and_cancellation_kill_the_whole_group() {
        let ws = tempfile::tempdir().unwrap();
        let reg = registry(SandboxConfig::default());
        // The background sleep is not the shell itself: only killing the group ends it.
        let script = |n: u32| format!("sleep 30 & echo $! > bg{n}.pid; echo $$ > sh{n}.pid; wait");
        rt().block_on(async {
            let mut ctx = ToolContext::new(ws.path());
            ctx.timeout = Duration::from_millis(500);
            let t = Instant::now();
            let out = run(&reg, &ctx, "shell", &script(1)).await;
            assert!(out.contains("timed out after 500ms"), "{out}");
            assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

            let ctx = ToolContext::new(ws.path());
            let cancel = ctx.cancel.clone();
            let second = script(2);
            let t = Instant::now();
            let (out, _) = tokio::join!(run(&reg, &ctx, "shell", &second), async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                cancel.cancel();
            });
            assert!(out.contains("cancelled"), "{out}");
            assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

            // A program that exits leaves nothing behind either, and does not wait for it.
            let ctx = ToolContext::new(ws.path());
            let t = Instant::now();
            let out = run(
                &reg,
                &ctx,
                "shell",
                "sleep 30 & echo $! > bg3.pid; echo started",
            )
            .await;
            assert!(
                out.contains("exit code 0") && out.contains("started"),
                "{out}"
            );
            assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        });
        for f in ["bg1.pid", "sh1.pid", "bg2.pid", "sh2.pid", "bg3.pid"] {
            wait_gone(&read_pid(&ws.path().join(f)));
        }
    }

    #[test]
    fn output_exit_status_and_spawn_failures() {
        let ws = tempfile::tempdir().unwrap();
        let mut ctx = ToolContext::new(ws.path());
        ctx.max_output = 1000;
        let reg = registry(SandboxConfig::default());
        rt().block_on(async {
            check(
                &reg,
                &ctx,
                &[
                    (
                        "shell",
                        "echo out; echo err >&2; exit 3".into(),
                        &["[exit code 3 | sandbox: ", "\nstdout:\nout\nstderr:\nerr"],
                    ),
                    ("shell", "true".into(), &["exit code 0", "(no output)"]),
                    (
                        "shell",
                        "kill -9 $$".into(),
                        &["killed by signal 9 (SIGKILL)"],
                    ),
                    (
                        "python",
                        "print(6 * 7)".into(),
                        &["[exit code 0 |", "stdout:\n42", "!stderr"],
                    ),
                    ("python", "import sys\nsys.exit(5)".into(), &["exit code 5"]),
                    // The program is a file, so the traceback shows the failing line.
                    (
                        "python",
                        "x = 1\nprint(x / 0)".into(),
                        &["exit code 1", "    print(x / 0)", "ZeroDivisionError"],
                    ),
                    (
                        "python",
                        "import sys\nprint(sys.flags.isolated)".into(),
                        &["stdout:\n1"],
                    ),
                ],
            )
            .await;
            let out = run(&reg, &ctx, "shell", "seq 1 100000; seq 1 50000 >&2").await;
            assert!(out.len() < 1000, "{} bytes:\n{out}", out.len());
            assert!(out.contains("stdout:\n1\n2\n3\n"), "{out}");
            assert!(out.contains("\n99999\n100000\nstderr:\n1\n2\n"), "{out}");
            assert!(out.ends_with("\n49999\n50000"), "{out}");
            assert_eq!(out.matches("bytes left out ...]").count(), 2, "{out}");

            let nowhere = registry(SandboxConfig {
                env: vec![("PATH".into(), "/nonexistent".into())],
                ..SandboxConfig::default()
            });
            let e = nowhere
                .call("python", json!({"code": "1"}), &ctx)
                .await
                .unwrap_err();
            assert!(
                matches!(&e, ToolError::Failed(m) if m.contains("cannot start python3")),
                "{e}"
            );
            let e = reg
                .call("shell", json!({"command": 1}), &ctx)
                .await
                .unwrap_err();
            assert!(matches!(e, ToolError::InvalidArguments(_)), "{e}");
        });
        // The programs of python calls are removed afterwards.
        let left: Vec<_> = std::fs::read_dir(ws.path().join(".tmp")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    const LEAVE_GROUP: &str = "import os
if os.fork() == 0:
    for name, f in [('setpgid', lambda: os.setpgid(0, 0)), ('setsid', os.setsid)]:
        try:
            f()
            print(name, 'ok', end=', ', flush=True)
        except PermissionError:
            print(name, 'refused', end=', ', flush=True)
    os._exit(0)
os.wait()";

    #[test]
    fn limits_hold_and_privileges_are_gone() {
        let ws = tempfile::tempdir().unwrap();
        let ctx = ToolContext::new(ws.path());
        let reg = registry(SandboxConfig {
            limits: Limits {
                cpu_seconds: 1,
                address_space: 512 << 20,
                file_size: 1 << 20,
                open_files: 32,
                ..Limits::default()
            },
            ..SandboxConfig::default()
        });
        let seccomp = sandbox_level().seccomp;
        rt().block_on(check(
            &reg,
            &ctx,
            &[
                ("shell", "ulimit -n; ulimit -c".into(), &["stdout:\n32\n0"]),
                // Without capabilities (CAP_SYS_RESOURCE for root) a hard limit stays put.
                ("shell", "ulimit -n 64 && echo raised".into(), &["!raised"]),
                (
                    "shell",
                    "grep -E '^(Cap(Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status"
                        .into(),
                    &[
                        "CapPrm:\t0000000000000000",
                        "CapEff:\t0000000000000000",
                        "CapBnd:\t0000000000000000",
                        "CapAmb:\t0000000000000000",
                        "NoNewPrivs:\t1",
                        if seccomp {
                            "Seccomp:\t2"
                        } else {
                            "Seccomp:\t0"
                        },
                    ],
                ),
                // sh is killed by SIGXFSZ; python ignores it and gets EFBIG.
                (
                    "shell",
                    "head -c 2000000 /dev/zero > big; echo rc=$?".into(),
                    &["rc=153"],
                ),
                (
                    "python",
                    "open('big2', 'wb').write(b'0' * 2_000_000)".into(),
                    &["File too large"],
                ),
                (
                    "python",
                    "import os\nfds = [os.open('/dev/null', os.O_RDONLY) for _ in range(64)]"
                        .into(),
                    &["Too many open files"],
                ),
                ("python", "b = bytearray(1 << 30)".into(), &["MemoryError"]),
                (
                    "shell",
                    "while :; do :; done".into(),
                    &["killed by signal 24 (SIGXCPU: CPU time limit)"],
                ),
                // Not the group leader (which may never setsid): a forked child tries to leave.
                (
                    "python",
                    LEAVE_GROUP.into(),
                    &[if seccomp {
                        "setpgid refused, setsid refused"
                    } else {
                        "setsid ok"
                    }],
                ),
            ],
        ));
        assert_eq!(
            std::fs::metadata(ws.path().join("big")).unwrap().len(),
            1 << 20
        );
    }
}
