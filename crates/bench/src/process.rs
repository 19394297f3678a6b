//! What Linux says about a process (peak memory, CPU time) and what the build left on disk
//! (binary sizes, criterion's estimates).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Peak resident memory (`VmHWM`) in bytes, as Lambda's "Max Memory Used" counts it.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User + system CPU time the process has used so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name and state.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// The zip Lambda would be given: `cargo lambda`'s `bootstrap.zip` next to the binary when there
/// is one, else one made here (deflate, the binary named `bootstrap`, as cargo lambda makes it).
pub fn zipped_size(binary: &Path, scratch: &Path) -> Option<u64> {
    if let Some(zip) = binary.parent().map(|dir| dir.join("bootstrap.zip"))
        && binary.file_name().is_some_and(|name| name == "bootstrap")
        && zip.exists()
    {
        return std::fs::metadata(zip).ok().map(|m| m.len());
    }
    let name = binary.file_name()?.to_string_lossy().into_owned();
    let dir = scratch.join("zip").join(&name);
    std::fs::create_dir_all(&dir).ok()?;
    let bootstrap = dir.join("bootstrap");
    std::fs::copy(binary, &bootstrap).ok()?;
    let zip = dir.join("bootstrap.zip");
    let _ = std::fs::remove_file(&zip);
    let made = Command::new("python3")
        .args(["-m", "zipfile", "-c"])
        .arg(&zip)
        .arg(&bootstrap)
        .status()
        .ok()?;
    made.success()
        .then(|| std::fs::metadata(&zip).ok().map(|m| m.len()))
        .flatten()
}

/// One criterion benchmark's median, from `target/criterion/<group>/<name>/new/estimates.json`.
pub fn criterion_median(criterion_dir: &Path, group: &str, name: &str) -> Option<Duration> {
    let estimates = read_json(&criterion_dir.join(group).join(name).join("new/estimates.json"))?;
    let nanos = estimates["median"]["point_estimate"].as_f64()?;
    Some(Duration::from_secs_f64(nanos / 1e9))
}

/// The bytes a criterion benchmark declared as its throughput.
pub fn criterion_bytes(criterion_dir: &Path, group: &str, name: &str) -> Option<u64> {
    let benchmark = read_json(&criterion_dir.join(group).join(name).join("new/benchmark.json"))?;
    benchmark["throughput"]["Bytes"].as_u64()
}

fn read_json(path: &PathBuf) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}
