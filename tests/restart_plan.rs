//! `scripts/restart_all.sh`'s own logic without opening a connection: its sizing (the same as
//! `scripts/capacity.sh`'s), the memory check that refuses a run before it starts (with a fake
//! `/proc/meminfo`), and its usage errors. The real run at small N is in `.ci/run`
//! (`scripts/restart_all.sh 2000`). Without python3 each test prints SKIP.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};

const GIB_KB: u64 = 1 << 20;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn python3(test: &str) -> bool {
    let found = Command::new("python3").arg("--version").output().is_ok();
    if !found {
        eprintln!("SKIP {test}: python3 missing");
    }
    found
}

/// A `/proc/meminfo` with this much available, on a 24 GiB machine, in a directory of the
/// test's own under target/.
fn meminfo(test: &str, available_kb: u64) -> Result<PathBuf> {
    let dir = root().join("target/tmp/restart_plan").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("meminfo");
    std::fs::write(
        &path,
        format!("MemTotal:       24683784 kB\nMemAvailable:   {available_kb} kB\nSlab: 1000 kB\n"),
    )?;
    Ok(path)
}

/// Runs the script with these arguments (and a fake meminfo, if any): exit code and output.
fn restart_all(args: &[&str], meminfo: Option<&Path>) -> Result<(i32, String)> {
    let mut cmd = Command::new("bash");
    cmd.current_dir(root())
        .arg("scripts/restart_all.sh")
        .args(args);
    if let Some(path) = meminfo {
        cmd.env("CAPACITY_MEMINFO", path);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().context("running scripts/restart_all.sh")?;
    let text = String::from_utf8_lossy(&stdout).into_owned() + &String::from_utf8_lossy(&stderr);
    Ok((status.code().unwrap_or(-1), text))
}

#[test]
fn small_and_million_runs_are_sized_as_capacity_sh_sizes_them() -> Result<()> {
    let test = "small_and_million_runs_are_sized_as_capacity_sh_sizes_them";
    if !python3(test) {
        return Ok(());
    }
    let plenty = meminfo(test, 20 * GIB_KB)?;
    let (code, out) = restart_all(&["2000", "--plan"], Some(&plenty))?;
    ensure!(code == 0, "2,000 fits: {code} {out}");
    ensure!(
        out.contains("2000 idle WebSocket connections; server --workers 1, load generator --threads 1, 1 source addresses; ramp 5000/s"),
        "the CI run: one worker, one thread, one source address: {out}"
    );
    // RLIMIT_NOFILE decides the tables; on this machine (20,000) a million takes 53 and 80
    // source addresses, as in capacity.sh's million.
    let limit = nofile_hard()?;
    if limit == 20_000 {
        let (code, out) = restart_all(&["1000000", "8000", "--plan"], Some(&plenty))?;
        ensure!(code == 0, "a million fits in 20 GiB: {code} {out}");
        ensure!(
            out.contains("server --workers 53, load generator --threads 53, 80 source addresses; ramp 8000/s"),
            "{out}"
        );
    } else {
        eprintln!("SKIP {test} (million sizing): RLIMIT_NOFILE is {limit}, not 20,000");
    }
    let (code, out) = restart_all(&["20000", "--history", "100", "--plan"], Some(&plenty))?;
    ensure!(
        code == 0 && out.contains("20000 SSE subscribers (--history 100)"),
        "{code} {out}"
    );
    let (code, out) = restart_all(&["20000", "--broker", "redis", "--plan"], Some(&plenty))?;
    ensure!(
        code == 0 && out.contains("SSE subscribers (--history 1000) on node B of two behind redis"),
        "--broker implies history: {code} {out}"
    );
    Ok(())
}

#[test]
fn a_million_that_would_not_fit_is_refused_before_it_starts() -> Result<()> {
    let test = "a_million_that_would_not_fit_is_refused_before_it_starts";
    if !python3(test) {
        return Ok(());
    }
    // About 11.4 GiB needed for a million idle, plus the reserve: 8 GiB does not hold it.
    let tight = meminfo(test, 8 * GIB_KB)?;
    let (code, out) = restart_all(&["1000000", "--plan"], Some(&tight))?;
    ensure!(code == 3, "expected a refusal (exit 3), got {code}: {out}");
    ensure!(
        out.contains("STOP before 1,000,000 connections") && out.contains("MemAvailable is 8.0"),
        "the refusal names the count and the memory: {out}"
    );
    // The refusal comes before anything is built or started, --plan or not.
    let (code, out) = restart_all(&["1000000"], Some(&tight))?;
    ensure!(code == 3 && !out.contains("raised"), "{code} {out}");
    Ok(())
}

#[test]
fn usage_errors_exit_2() -> Result<()> {
    let test = "usage_errors_exit_2";
    if !python3(test) {
        return Ok(());
    }
    for args in [
        &["2000", "--broker", "kafka", "--plan"][..],
        &["--plan"][..],
        &["2000", "--bogus"][..],
    ] {
        let (code, out) = restart_all(args, None)?;
        ensure!(code == 2, "{args:?}: expected 2, got {code}: {out}");
    }
    Ok(())
}

fn nofile_hard() -> Result<u64> {
    let out = Command::new("bash")
        .args(["-c", "ulimit -Hn"])
        .output()
        .context("ulimit")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.trim().parse().unwrap_or(u64::MAX))
}
