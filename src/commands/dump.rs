//! `dump`: many targets in parallel, each its own SSH session running the
//! embedded agent, into one store. One target failing does not stop the
//! others; Ctrl-C stops every agent and writes no manifest.

use super::{as_usage, usage};
use crate::agent_bin::{agent_hash, AGENT};
use crate::cli::{DumpArgs, TargetSpec};
use crate::deploy::{self, sh_quote, Agent, Launch};
use crate::manifest::{default_name, validate_name, validate_source};
use crate::receiver::{receive, InFlight, ReceiveOptions, ReceiveStats};
use crate::store::Store;
use crate::target::Target;
use crate::{progress, signals, transport, untrusted};
use anyhow::{bail, Context, Result};
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One target, checked before any work starts.
struct PlannedTarget {
    spec: TargetSpec,
    target: Target,
    name: String,
}

struct TargetDumped {
    manifest: String,
    stats: ReceiveStats,
    took: Duration,
}

pub fn run(store_dir: &Path, specs: Vec<TargetSpec>, args: DumpArgs) -> Result<u8> {
    // Every argument is checked before any work: a usage error (exit 2).
    let mut targets = Vec::new();
    for spec in specs {
        let checked = (|| -> Result<PlannedTarget> {
            // The source is recorded in the manifest: no control characters.
            validate_source(&spec.target)?;
            let target = Target::parse(&spec.target)?;
            let name = match &spec.name {
                Some(n) => {
                    validate_name(n)?;
                    n.clone()
                }
                None => default_name(&target.host, &target.path)
                    .with_context(|| format!("target {}", spec.target))?,
            };
            Ok(PlannedTarget { spec, target, name })
        })();
        targets.push(checked.map_err(as_usage)?);
    }
    diskdump_agent::proto::check_params(
        args.block_size
            .unwrap_or(diskdump_agent::DEFAULT_BLOCK_SIZE),
        args.batch_size,
        args.window,
    )
    .map_err(|e| usage(e.to_string()))?;
    let how = args.ssh.options()?;
    let store = crate::store::open_for_writing(store_dir, args.block_size, None)?;
    let session = store.begin_writes()?;
    let inflight = InFlight::new();
    let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let results: Vec<Mutex<Option<Result<TargetDumped>>>> =
        targets.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let workers = args
        .jobs
        .unwrap_or(targets.len())
        .clamp(1, targets.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(planned) = targets.get(i) else {
                    return;
                };
                let bar = bars.add(target_bar(&planned.spec.target));
                let r = if signals::received().is_some() {
                    Err(anyhow::anyhow!("not started: interrupted"))
                } else {
                    dump_one(store.as_ref(), &inflight, &how, &args, planned, &bar)
                        .map_err(|e| with_sudo_hint(e, planned.spec.sudo))
                };
                bar.finish_and_clear();
                if let Err(e) = &r {
                    let line = untrusted::line(&format!("{}: FAILED: {e:#}", planned.spec.target));
                    if bars.is_hidden() {
                        eprintln!("{line}");
                    } else {
                        let _ = bars.println(line);
                    }
                }
                *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            });
        }
    });
    let results: Vec<Result<TargetDumped>> = results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .expect("every planned ran")
        })
        .collect();
    store.end_writes(session)?;
    // A closed stdout must not hide a failed target's exit code.
    // Nothing of the bars stays on the terminal above the report.
    let _ = bars.clear();
    let printed = if crate::output::json() {
        report(&targets, &results)
    } else {
        print_summary(&targets, &results).map_err(anyhow::Error::from)
    };
    let failed = results.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        signals::check()?;
        bail!("{failed} of {} targets failed", targets.len());
    }
    printed?;
    Ok(0)
}

/// A device the remote user may not read: say what usually fixes it.
fn with_sudo_hint(e: anyhow::Error, sudo: bool) -> anyhow::Error {
    let msg = format!("{e:#}");
    if sudo || !msg.contains("Permission denied") {
        return e;
    }
    anyhow::anyhow!("{msg} (reading a device usually needs root: add --sudo after the target)")
}

/// Until the agent says how big the source is, a spinner and what is
/// happening ("connecting", "deploying agent"), not an empty 0 B/0 B bar.
fn target_bar(target: &str) -> ProgressBar {
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("{prefix:24} {spinner} {msg}").expect("static template"),
    );
    pb.set_prefix(shorten(target, 24));
    pb.set_message("connecting");
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// The bar once the size is known, fitting 80 columns.
fn transfer_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:24} [{bar:20}] {bytes:>9}/{total_bytes:9} {binary_bytes_per_sec:>11} {msg}",
    )
    .expect("static template")
    .progress_chars("=> ")
}

/// A target name in `width` columns: its middle gives way.
fn shorten(s: &str, width: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= width {
        return s.to_string();
    }
    let head = (width - 1) / 2;
    let tail = width - 1 - head;
    let mut out: String = chars[..head].iter().collect();
    out.push('~');
    out.extend(&chars[chars.len() - tail..]);
    out
}

fn dump_one(
    store: &dyn Store,
    inflight: &InFlight,
    how: &transport::Options,
    args: &DumpArgs,
    planned: &PlannedTarget,
    bar: &ProgressBar,
) -> Result<TargetDumped> {
    let started = Instant::now();
    let t = &planned.target;
    let source = format!("{}:{}", t.host, t.path);
    let agent_args = format!(
        "--block-size {} --batch-size {} --window {} --compress {} {}",
        store.block_size(),
        args.batch_size,
        args.window,
        args.compress,
        sh_quote(&t.path)
    );
    let remote = transport::connect(&t.dest(), how)?;
    let label = remote.label().to_string();
    let idle = Duration::from_secs(args.idle_timeout);
    let hash = agent_hash();
    let launch = Launch {
        agent: AGENT,
        agent_hash: &hash,
        sudo: planned.spec.sudo,
        args: &agent_args,
        idle,
    };
    let Agent {
        mut input,
        output,
        handle,
    } = deploy::start(&*remote, &launch, &|| bar.set_message("deploying agent"))?;
    bar.set_message("");
    let sized = AtomicBool::new(false);
    let update = |st: &ReceiveStats| {
        if !sized.swap(true, Ordering::Relaxed) {
            bar.set_style(transfer_style());
        }
        bar.set_length(st.size);
        bar.set_position(st.bytes_read);
        bar.set_message(format!("new {}", HumanBytes(st.bytes_new)));
    };
    let opts = ReceiveOptions {
        store,
        inflight,
        source: &source,
        progress: &update,
        max_size: args.max_size,
    };
    let finished = AtomicBool::new(false);
    let kill = handle.killer();
    let received = std::thread::scope(|s| {
        // Ctrl-C: cut the session, so the agent sees EOF and the receiver stops.
        s.spawn(|| {
            while !finished.load(Ordering::SeqCst) {
                if signals::received().is_some() {
                    kill();
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let r = receive(&opts, &mut input, output);
        finished.store(true, Ordering::SeqCst);
        r
    });
    let received = match received {
        Ok(r) => r,
        Err(e) => {
            handle.kill();
            signals::check()?;
            let exit = handle.wait().ok();
            if let Some(hint) = exit.as_ref().and_then(|x| deploy::sudo_hint(&x.stderr)) {
                bail!("{source}: {hint}");
            }
            if input.timed_out() {
                bail!(
                    "dump of {source} via {label} failed; no manifest written: the agent sent \
                     nothing for {} s (stalled?); --idle-timeout or DISKDUMP_IDLE_TIMEOUT sets the limit",
                    args.idle_timeout
                );
            }
            // The agent's last words, unless the error already carries them.
            let said = format!("{e:#}");
            let last = exit.as_ref().map(|x| x.last_line()).unwrap_or_default();
            let tail = match last.trim_start_matches("diskdump-agent: ") {
                "" => String::new(),
                l if said.contains(l) => String::new(),
                _ => format!(" (remote stderr: {last})"),
            };
            // An agent killed on the remote (OOM killer, an admin) only shows
            // as a cut stream here: say what happened to it.
            let killed = match exit.as_ref().and_then(|x| x.signal.as_deref()) {
                Some(sig) => format!(" (the agent was killed by SIG{sig})"),
                None => String::new(),
            };
            return Err(e.context(format!(
                "dump of {source} via {label} failed; no manifest written{killed}{tail}"
            )));
        }
    };
    // The agent said Done and every block is stored: it exits when its input closes. One that
    // does not is cut off after the idle timeout, so it cannot hold the store lock.
    match handle.wait_for(idle)? {
        Some(exit) if exit.success() => {}
        Some(exit) => bail!(
            "{source}: {}; no manifest written",
            deploy::exit_reason(&exit, "the agent, after finishing,")
        ),
        None => bail!(
            "{source}: the agent did not exit within {} s after finishing; its session was closed; \
             no manifest written",
            args.idle_timeout
        ),
    }
    signals::check()?;
    let entry =
        store.write_manifest_spooled(&planned.name, &received.manifest, &received.hashes)?;
    Ok(TargetDumped {
        manifest: entry.rel,
        stats: received.stats,
        took: started.elapsed(),
    })
}

/// One target's outcome as `--json` prints it.
#[derive(serde::Serialize)]
struct TargetReport<'a> {
    target: &'a str,
    name: &'a str,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    size: u64,
    blocks_new: u64,
    blocks_present: u64,
    blocks_zero: u64,
    bytes_new: u64,
    wire_bytes: u64,
    seconds: f64,
}

fn report(targets: &[PlannedTarget], results: &[Result<TargetDumped>]) -> Result<()> {
    let rows: Vec<TargetReport> = targets
        .iter()
        .zip(results)
        .map(|(p, r)| {
            let mut t = TargetReport {
                target: &p.spec.target,
                name: &p.name,
                ok: r.is_ok(),
                manifest: None,
                error: None,
                size: 0,
                blocks_new: 0,
                blocks_present: 0,
                blocks_zero: 0,
                bytes_new: 0,
                wire_bytes: 0,
                seconds: 0.0,
            };
            match r {
                Ok(d) => {
                    t.manifest = Some(&d.manifest);
                    t.size = d.stats.size;
                    t.blocks_new = d.stats.blocks_new;
                    t.blocks_present = d.stats.blocks_present + d.stats.blocks_deduped;
                    t.blocks_zero = d.stats.blocks_zero;
                    t.bytes_new = d.stats.bytes_new;
                    t.wire_bytes = d.stats.wire_bytes;
                    t.seconds = d.took.as_secs_f64();
                }
                Err(e) => t.error = Some(untrusted::line(&format!("{e:#}"))),
            }
            t
        })
        .collect();
    let failed = rows.iter().filter(|r| !r.ok).count();
    crate::output::emit(&serde_json::json!({ "targets": rows, "failed": failed }))
}

/// The table fits 80 columns: a target longer than its column gets a line
/// of its own (the numbers follow on the next), the manifest goes below; a
/// failed target's error was printed when it happened.
fn print_summary(
    targets: &[PlannedTarget],
    results: &[Result<TargetDumped>],
) -> std::io::Result<()> {
    const W: usize = 24;
    crate::outln!(
        "{:<W$} {:>7} {:>8} {:>7} {:>9} {:>8} {:>11}",
        "TARGET",
        "NEW",
        "PRESENT",
        "ZERO",
        "WIRE",
        "TIME",
        "RATE"
    )?;
    for (planned, r) in targets.iter().zip(results) {
        let target = untrusted::line(&planned.spec.target);
        match r {
            Ok(d) => {
                let lead = if target.chars().count() > W {
                    crate::outln!("{target}")?;
                    String::new()
                } else {
                    target
                };
                crate::outln!(
                    "{lead:<W$} {:>7} {:>8} {:>7} {:>9} {:>8} {:>11}",
                    d.stats.blocks_new,
                    d.stats.blocks_present + d.stats.blocks_deduped,
                    d.stats.blocks_zero,
                    HumanBytes(d.stats.wire_bytes).to_string().replace(' ', ""),
                    progress::secs(d.took),
                    progress::rate(d.stats.size, d.took)
                )?;
                crate::outln!("  -> {}", d.manifest)?;
            }
            Err(_) => crate::outln!("{target:<W$} FAILED (error above)")?,
        }
    }
    Ok(())
}
