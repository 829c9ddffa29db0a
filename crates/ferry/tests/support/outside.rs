//! Running an outside tool from a test (schemathesis, pytest, `npm test`): its output
//! gathered in one log, the tool killed past a deadline.

use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Pause between two looks at whether the tool has exited.
const PAUSE: Duration = Duration::from_millis(100);

/// Runs `cmd` with stdin closed and stdout and stderr in one log, killing it past
/// `deadline`: its exit status (`None`: killed at the deadline), its output, and how long
/// it ran. `what` names it in a failure to start.
pub fn run(mut cmd: Command, what: &str, deadline: Duration) -> (Option<ExitStatus>, String, Duration) {
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let log_path = scratch.path().join("output.log");
    let log = std::fs::File::create(&log_path).expect("a log file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("the log file, twice"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("{what} cannot be waited for: {e}")) {
            break Some(status);
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(PAUSE);
    };
    (status, std::fs::read_to_string(&log_path).unwrap_or_default(), started.elapsed())
}
