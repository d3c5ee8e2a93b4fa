//! Output: JSON, readable tables for the terminal, and the Markdown results table of docs/benchmarks.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::scenario::RunResult;
use crate::suite::{CompareResult, ScenarioSummary, Stat, SuiteResults, PEAK};

pub fn write_json<T: Serialize>(path: Option<&Path>, value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    match path {
        Some(p) if p.as_os_str() != "-" => {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).ok();
            }
            std::fs::write(p, text + "\n")?;
        }
        _ => println!("{text}"),
    }
    Ok(())
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1}", k as f64 / 1024.0)).unwrap_or_else(|| "—".into())
}

fn num(v: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn ms(v: f64) -> String {
    if !v.is_finite() {
        "—".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn cvs(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "—".into()
    }
}

/// One line per run, for progress output.
pub fn one_line(r: &RunResult) -> String {
    let delivered = match (&r.verification, r.delivered) {
        (Some(v), Some(d)) => format!("delivered {d}/{} missing {} dup {}", v.acked, v.missing, v.duplicates),
        _ => "delivered n/a".into(),
    };
    format!(
        "{} req/s, {} events/s, p50 {} ms, p99 {} ms, max {} ms, 2xx {}/{}, {delivered}, RSS idle/peak {}/{} MiB",
        num(r.req_per_s),
        num(r.events_per_s),
        ms(r.latency.p50_ms),
        ms(r.latency.p99_ms),
        ms(r.latency.max_ms),
        r.ok_2xx,
        r.requests_sent,
        mib(r.rss_idle_kib),
        mib(r.rss_peak_kib),
    )
}

/// The readable table of one run.
pub fn run_table(r: &RunResult) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\nloadgen run {} — target {} {}", r.run_id, r.scenario, r.url.as_deref().unwrap_or(""));
    let rows: Vec<(&str, String)> = vec![
        ("load", format!(
            "{} connections, {}, batch {} ({}{}), ack {}",
            r.connections,
            r.rate.map(|x| format!("open loop {x:.0} req/s")).unwrap_or_else(|| "closed loop".into()),
            r.batch,
            r.format,
            if r.gzip { ", gzip" } else { "" },
            r.ack.as_deref().unwrap_or("default")
        )),
        ("measured window", format!("{:.2} s (after {:.1} s warm-up); whole run {:.2} s", r.window_s, r.warmup_s, r.elapsed_s)),
        ("requests", format!("{} sent, {} answered, {} 2xx", r.requests_sent, r.responses, r.ok_2xx)),
        ("status", format!("{:?}", r.status_counts)),
        ("req/s (2xx)", num(r.req_per_s)),
        ("events/s (acknowledged)", num(r.events_per_s)),
        ("events/s (delivered)", r.delivered_events_per_s.map(num).unwrap_or_else(|| "n/a".into())),
        ("latency ms p50/p90/p99/max", format!("{} / {} / {} / {}", ms(r.latency.p50_ms), ms(r.latency.p90_ms), ms(r.latency.p99_ms), ms(r.latency.max_ms))),
        ("  from actual send", format!("{} / {} / {} / {}", ms(r.service_latency.p50_ms), ms(r.service_latency.p90_ms), ms(r.service_latency.p99_ms), ms(r.service_latency.max_ms))),
        ("non-2xx latency ms p50/p99/max", if r.rejection_latency.count > 0 { format!("{} / {} / {} ({} answers)", ms(r.rejection_latency.p50_ms), ms(r.rejection_latency.p99_ms), ms(r.rejection_latency.max_ms), r.rejection_latency.count) } else { "none".into() }),
        ("  to the kernel's receipt", if r.rejection_kernel_latency.count > 0 { format!("{} / {} / {}", ms(r.rejection_kernel_latency.p50_ms), ms(r.rejection_kernel_latency.p99_ms), ms(r.rejection_kernel_latency.max_ms)) } else { "—".into() }),
        ("events", match &r.verification {
            Some(v) => format!(
                "{} sent, {} acknowledged, {} delivered, {} missing, {} duplicates, {} delivered unacknowledged, {} in DLQ ({} records read in {:.1} s{})",
                r.events_sent, v.acked, v.delivered, v.missing, v.duplicates, v.unacked_delivered,
                v.dlq_records.map(|d| d.to_string()).unwrap_or_else(|| "—".into()), v.records_read, v.read_s,
                if v.complete { "" } else { ", INCOMPLETE" }
            ),
            None => format!("{} sent, {} acknowledged, delivery not checked", r.events_sent, r.events_acked),
        }),
        ("target RSS MiB idle / peak", format!("{} / {}", mib(r.rss_idle_kib), mib(r.rss_peak_kib))),
        ("CPU s target / loadgen", format!("{} / {:.2}", r.target_cpu_s.map(|c| format!("{c:.2}")).unwrap_or_else(|| "—".into()), r.client_cpu_s)),
        (
            "machine cores during load",
            match &r.cpu {
                Some(c) => format!(
                    "{:.2} busy: broker {}, other work {}; {} withheld by the hypervisor (steal) (of {} cores)",
                    c.machine_busy_cores,
                    c.broker_cores.map(|b| format!("{b:.2}")).unwrap_or_else(|| "?".into()),
                    c.other_cores.map(|b| format!("{b:.2}")).unwrap_or_else(|| "?".into()),
                    c.steal_cores.map(|b| format!("{b:.2}")).unwrap_or_else(|| "?".into()),
                    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
                ),
                None => "—".into(),
            },
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(s, "  {k:<32} {v}");
    }
    if let Some(e) = &r.exit {
        let _ = writeln!(
            s,
            "  {:<32} {} (stop {:.1} s), log: {} warnings, {} errors, {} stderr lines",
            "target exit", e.status, e.stop_s, e.log.warn, e.log.error, e.log.stderr_lines
        );
        for l in e.log.samples.iter().take(5) {
            let _ = writeln!(s, "    {l}");
        }
    }
    for n in &r.notes {
        let _ = writeln!(s, "  NOTE: {n}");
    }
    if let Some(f) = &r.log_file {
        let _ = writeln!(s, "  {:<32} {f}", "target log");
    }
    s
}

/// The readable table of a comparison.
pub fn compare_table(c: &CompareResult) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n{} — {} × {}", c.name, c.scenarios.join(" / "), c.repeats);
    if !c.set_aside.is_empty() {
        let _ = writeln!(
            s,
            "  ({} runs set aside and run again: the hypervisor withheld more than {} cores during them)",
            c.set_aside.len(),
            c.steal_limit
        );
    }
    let _ = writeln!(
        s,
        "  {:<10} {:>4} {:>10} {:>7} {:>11} {:>11} {:>8} {:>8} {:>8} {:>8} {:>9} {:>17} {:>13}",
        "scenario",
        "runs",
        "req/s",
        "cv",
        "events/s",
        "delivered/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "non-2xx",
        "missing/dup",
        "RSS MiB i/p"
    );
    for x in &c.summary {
        let _ = writeln!(
            s,
            "  {:<10} {:>4} {:>10} {:>7} {:>11} {:>11} {:>8} {:>8} {:>8} {:>8} {:>9} {:>17} {:>13}{}",
            x.scenario,
            x.runs,
            num(x.req_per_s.median),
            cvs(x.req_per_s.cv),
            num(x.events_per_s.median),
            x.delivered_events_per_s.as_ref().map(|d| num(d.median)).unwrap_or_else(|| "n/a".into()),
            ms(x.p50_ms.median),
            ms(x.p90_ms.median),
            ms(x.p99_ms.median),
            ms(x.max_ms.median),
            x.non_2xx,
            match (x.missing, x.duplicates) {
                (Some(m), Some(d)) => format!("{m}/{d}"),
                _ => "n/a".into(),
            },
            format!("{}/{}", mib(x.rss_idle_max_kib), mib(x.rss_peak_max_kib)),
            if x.noisy { format!("  NOISY ({} cv {:.3})", x.headline, x.headline_cv) } else { String::new() }
        );
    }
    for r in &c.ratios {
        let pairs: Vec<String> = r.per_pair.iter().map(|v| format!("{v:.3}")).collect();
        let _ = writeln!(
            s,
            "  {} ÷ {} {:<24} median of pairs {:.3}  (pairs {})  ratio of medians {:.3}",
            r.numerator,
            r.denominator,
            r.metric,
            r.median,
            pairs.join(", "),
            r.ratio_of_medians
        );
    }
    for f in &c.failures {
        let _ = writeln!(s, "  FAILED: {f}");
    }
    s
}

/// One row of the results table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub row: String,
    pub measure: String,
    pub result: String,
    pub floor: String,
    pub meets: Option<bool>,
}

fn meets(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "n/a",
    }
}

/// A result as `text` shows it, unless its rounding lands on the other side of the floor than the value
/// itself (0.846 against "≥ 0.85" is not "0.85 … no"): then the value with as many more decimals as that
/// takes, up to five. `meets` is the row's floor.
fn on_its_side(value: f64, text: String, meets: impl Fn(f64) -> bool) -> String {
    let same_side = |t: &str| t.parse::<f64>().map_or(true, |shown| meets(shown) == meets(value));
    if same_side(&text) {
        return text;
    }
    (3..=5).map(|decimals| format!("{value:.decimals$}")).find(|t| same_side(t)).unwrap_or_else(|| value.to_string())
}

fn pairs_text(per_pair: &[f64]) -> String {
    per_pair.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(", ")
}

fn noisy_mark(s: Option<&ScenarioSummary>) -> String {
    let Some(x) = s else { return String::new() };
    let mut mark = String::new();
    if x.noisy {
        mark += &format!(" ⚠ {} CV {:.2} > 0.1", x.scenario, x.headline_cv);
    }
    if x.steal_over_limit > 0 {
        mark += &format!(
            " ⚠ {} run(s) of {} short of CPU (steal), kept when the reruns ran out",
            x.steal_over_limit, x.scenario
        );
    }
    mark
}

/// The rows (a)–(g) from the suites that ran.
pub fn rows(r: &SuiteResults) -> Vec<Row> {
    let mut rows = Vec::new();
    let suite = |name: &str| r.suites.iter().find(|s| s.name == name).map(|s| &s.result);
    let ratio_row =
        |rows: &mut Vec<Row>, id: &str, name: &str, num: &str, den: &str, metric: &str, what: &str, floor: f64| {
            if let Some(c) = suite(name) {
                let (result, ok) = match c.ratio(num, den, metric) {
                    Some(x) => {
                        let noisy = format!("{}{}", noisy_mark(c.summary_of(num)), noisy_mark(c.summary_of(den)));
                        (
                            format!(
                                "**{}** (pairs {}; ratio of medians {:.2}){noisy}",
                                on_its_side(x.median, format!("{:.2}", x.median), |v| v >= floor),
                                pairs_text(&x.per_pair),
                                x.ratio_of_medians
                            ),
                            Some(x.median >= floor),
                        )
                    }
                    None => ("no complete pair".into(), None),
                };
                rows.push(Row {
                    row: id.into(), measure: what.into(), result, floor: format!("≥ {floor}"), meets: ok
                });
            }
        };
    ratio_row(
        &mut rows,
        "(a)",
        "single-queued",
        "full",
        "bare",
        "req_per_s",
        "single events, ack=queued, 64 conns: full req/s ÷ bare req/s",
        0.5,
    );
    ratio_row(
        &mut rows,
        "(b)",
        "batch-ndjson",
        "full",
        "raw-kafka",
        "delivered_events_per_s",
        "100-event NDJSON batches: full ÷ raw-kafka delivered events/s",
        0.7,
    );
    if let Some(c) = suite("batch-ndjson-q1k") {
        if let Some(x) = c.ratio("full", "raw-kafka", "delivered_events_per_s") {
            rows.push(Row {
                row: "(b)".into(),
                measure: "the same with QUEUE_SIZE=1000 (context: the Go service's default)".into(),
                result: format!(
                    "{:.2} (pairs {}){}",
                    x.median,
                    pairs_text(&x.per_pair),
                    noisy_mark(c.summary_of("full"))
                ),
                floor: "—".into(),
                meets: None,
            });
        }
    }
    ratio_row(
        &mut rows,
        "(c)",
        "ack-kafka",
        "full",
        "bare",
        "req_per_s",
        "ack=kafka, 256 conns: full req/s ÷ bare req/s",
        0.3,
    );
    if let Some(s) = suite("ack-kafka").and_then(|c| c.summary_of("full")) {
        rows.push(Row {
            row: "(c)".into(),
            measure: "ack=kafka, 256 conns: full p50 latency (linger 5 ms + 3 ms)".into(),
            result: format!(
                "**{} ms** (runs {} ms; p99 {} ms)",
                on_its_side(s.p50_ms.median, ms(s.p50_ms.median), |v| v <= 8.0),
                s.p50_ms.values.iter().map(|v| ms(*v)).collect::<Vec<_>>().join(", "),
                ms(s.p99_ms.median)
            ),
            floor: "≤ 8 ms".into(),
            meets: s.p50_ms.median.is_finite().then_some(s.p50_ms.median <= 8.0),
        });
    }
    if let Some(s) = suite("ack-kafka-light").and_then(|c| c.summary_of("full")) {
        rows.push(Row {
            row: "(c)".into(),
            measure: "ack=kafka, open loop at 1,000 req/s (no queueing): full p50 latency from intended send".into(),
            result: format!(
                "**{} ms** (runs {} ms; p99 {} ms)",
                on_its_side(s.p50_ms.median, ms(s.p50_ms.median), |v| v <= 8.0),
                s.p50_ms.values.iter().map(|v| ms(*v)).collect::<Vec<_>>().join(", "),
                ms(s.p99_ms.median)
            ),
            floor: "≤ 8 ms".into(),
            meets: s.p50_ms.median.is_finite().then_some(s.p50_ms.median <= 8.0),
        });
    }
    if let Some(c) = suite("half-load") {
        if let Some(s) = c.summary_of("full") {
            let rate = c.runs.first().and_then(|x| x.rate).unwrap_or(f64::NAN);
            rows.push(Row {
                row: "(d)".into(),
                measure: format!(
                    "ack=queued, open loop at 50% of peak ({} req/s){}: full p99 latency from intended send time",
                    num(rate),
                    sending_threads(c, r.loadgen_threads)
                ),
                result: format!(
                    "**{} ms** (runs {} ms; achieved {} req/s; p50 {} ms){}",
                    on_its_side(s.p99_ms.median, ms(s.p99_ms.median), |v| v <= 10.0),
                    s.p99_ms.values.iter().map(|v| ms(*v)).collect::<Vec<_>>().join(", "),
                    num(s.req_per_s.median),
                    ms(s.p50_ms.median),
                    noisy_mark(Some(s))
                ),
                floor: "≤ 10 ms".into(),
                meets: s.p99_ms.median.is_finite().then_some(s.p99_ms.median <= 10.0),
            });
        }
    }
    // (e) every verified run.
    let verified: Vec<&RunResult> = r
        .suites
        .iter()
        .flat_map(|s| s.result.runs.iter().chain(&s.result.set_aside))
        .filter(|x| x.verification.is_some())
        .collect();
    if !verified.is_empty() {
        let acked: u64 = verified.iter().map(|x| x.verification.as_ref().unwrap().acked).sum();
        let delivered: u64 = verified.iter().filter_map(|x| x.delivered).sum();
        let missing: u64 = verified.iter().filter_map(|x| x.missing).sum();
        let dups: u64 = verified.iter().filter_map(|x| x.duplicates).sum();
        let bad: Vec<String> = verified
            .iter()
            .filter(|x| x.missing.unwrap_or(0) > 0 || x.duplicates.unwrap_or(0) > 0)
            .map(|x| {
                format!(
                    "{} ({}: missing {}, dup {})",
                    x.run_id,
                    x.label,
                    x.missing.unwrap_or(0),
                    x.duplicates.unwrap_or(0)
                )
            })
            .collect();
        rows.push(Row {
            row: "(e)".into(),
            measure: format!(
                "delivered == acknowledged in every run ({} runs read back: full, raw-kafka)",
                verified.len()
            ),
            result: format!(
                "**{}** — {} acknowledged, {} delivered, {} missing, {} duplicates{}",
                if bad.is_empty() { "all runs match" } else { "MISMATCH" },
                num(acked as f64),
                num(delivered as f64),
                missing,
                dups,
                if bad.is_empty() { String::new() } else { format!("; runs: {}", bad.join("; ")) }
            ),
            floor: "missing 0, duplicates 0".into(),
            meets: Some(bad.is_empty()),
        });
    }
    // (f) RSS of the service.
    let service_runs: Vec<&RunResult> = r
        .suites
        .iter()
        .flat_map(|s| s.result.runs.iter())
        .filter(|x| x.scenario == "full" || x.scenario == "full-noop")
        .collect();
    if let Some(idle) = service_runs.iter().filter_map(|x| x.rss_idle_kib).max() {
        rows.push(Row {
            row: "(f)".into(),
            measure: format!(
                "service peak RSS when idle (VmHWM after start-up, before load; max of {} runs)",
                service_runs.len()
            ),
            result: format!("**{} MiB**", mib(Some(idle))),
            floor: "≤ 64 MiB".into(),
            meets: Some(idle <= 64 * 1024),
        });
    }
    // The floor is for default settings: suites that override the service's environment are left out.
    let saturated: Vec<&RunResult> = r
        .suites
        .iter()
        .filter(|s| !s.command.contains("--service-env"))
        .flat_map(|s| s.result.runs.iter())
        .filter(|x| x.scenario == "full")
        .collect();
    if let Some((peak, run)) = saturated.iter().filter_map(|x| x.rss_peak_kib.map(|p| (p, x))).max_by_key(|(p, _)| *p) {
        rows.push(Row {
            row: "(f)".into(),
            measure: format!(
                "service peak RSS under load (VmHWM; max over {} `full` runs, default queue and pool)",
                saturated.len()
            ),
            result: format!("**{} MiB** (in {})", mib(Some(peak)), run.label),
            floor: "≤ 256 MiB".into(),
            meets: Some(peak <= 256 * 1024),
        });
    }
    ratio_row(
        &mut rows,
        "(g)",
        "noop-overhead",
        "full-noop",
        "bare",
        "req_per_s",
        "PUBLISHER=noop, 64 conns: full-noop req/s ÷ bare req/s",
        0.85,
    );
    if let Some(c) = suite("overload") {
        overload_rows(&mut rows, c, r.peak_rps, "open loop at 2× peak", "peak", r.loadgen_threads);
    }
    if let Some(c) = suite("overload-shed") {
        overload_rows(
            &mut rows,
            c,
            r.shed_peak_rps,
            "ack=kafka, MAX_CONCURRENT_REQUESTS=64: open loop at 2× its peak",
            "shed-peak's closed-loop peak at 64 conns",
            r.loadgen_threads,
        );
    }
    rows
}

/// ", N sending threads" when a suite's runs sent from other than the table's default number of loadgen
/// threads (the table's header names the default).
fn sending_threads(c: &CompareResult, default: usize) -> String {
    match c.runs.first().map(|run| run.loadgen_threads) {
        Some(n) if n != default => format!(", {n} sending threads"),
        _ => String::new(),
    }
}

/// The two rows of an overload suite: goodput against a peak, and how fast the rejections came. The peak is
/// the suite's own `peak` runs, one a round, when it measured them (the goodput is then the median of each
/// round's ratio); else the earlier peak whose double the load is.
fn overload_rows(
    rows: &mut Vec<Row>,
    c: &CompareResult,
    peak: Option<f64>,
    load: &str,
    peak_name: &str,
    default_threads: usize,
) {
    let Some(s) = c.summary_of("full") else { return };
    let threads = sending_threads(c, default_threads);
    let rate = c.runs.first().and_then(|x| x.rate).unwrap_or(f64::NAN);
    let earlier = peak.unwrap_or(f64::NAN);
    let vs_earlier = s.req_per_s.median / earlier;
    let (goodput, against, detail) = match (c.ratio("full", PEAK, "req_per_s"), c.summary_of(PEAK)) {
        (Some(ratio), Some(p)) => (
            ratio.median,
            format!(
                "the same rounds' closed-loop peak at {} conns (`peak`, median {} req/s)",
                c.runs.iter().find(|x| x.scenario == PEAK).map_or(0, |x| x.connections),
                num(p.req_per_s.median)
            ),
            format!("pairs {}; against {peak_name}: {vs_earlier:.2}; ", pairs_text(&ratio.per_pair)),
        ),
        _ => (vs_earlier, format!("{peak_name} ({} req/s)", num(earlier)), String::new()),
    };
    rows.push(Row {
        row: "(g)".into(),
        measure: format!("{load} ({} req/s), 512 conns{threads}: goodput (2xx/s) ÷ {against}", num(rate)),
        result: format!(
            "**{}** ({detail}{} 2xx/s; {} non-2xx answers; p99 from intended send {} ms){}",
            on_its_side(goodput, format!("{goodput:.2}"), |v| v >= 0.9),
            num(s.req_per_s.median),
            s.non_2xx,
            ms(s.p99_ms.median),
            noisy_mark(Some(s))
        ),
        floor: "≥ 0.9".into(),
        meets: goodput.is_finite().then_some(goodput >= 0.9),
    });
    let rej = &s.rejection_p99_ms;
    rows.push(Row {
        row: "(g)".into(),
        measure: format!("{load}{threads}: p99 latency of rejections (non-2xx, from actual send)"),
        result: if rej.values.is_empty() {
            if s.non_2xx > 0 {
                format!("no rejections in the measured window ({} during warm-up)", s.non_2xx)
            } else {
                "no rejections: the service took everything (the clients waited instead)".into()
            }
        } else {
            format!(
                "**{} ms** (runs {}; median p50 {} ms){}{}",
                on_its_side(rej.median, ms(rej.median), |v| v < 5.0),
                runs_ms(rej),
                ms(s.rejection_p50_ms.median),
                if s.rejection_kernel_p99_ms.values.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; to the kernel's receipt of the answer, without loadgen's own delay in noticing it: p99 {} ms (runs {})",
                        ms(s.rejection_kernel_p99_ms.median),
                        runs_ms(&s.rejection_kernel_p99_ms)
                    )
                },
                steal(s)
            )
        },
        floor: "< 5 ms".into(),
        meets: (!rej.values.is_empty()).then_some(rej.median < 5.0),
    });
    // The same load against a server that does nothing: what this machine allows any server's answers.
    if let Some(bare) = c.summary_of("bare") {
        rows.push(Row {
            row: "(g)".into(),
            measure: format!(
                "reference: `bare` (an axum handler answering 202, nothing else) at the same open-loop load{threads}: p99 latency from actual send"
            ),
            result: format!("{} ms (runs {}; p50 {} ms){}", ms(bare.p99_actual_ms.median), runs_ms(&bare.p99_actual_ms), ms(bare.p50_actual_ms.median), steal(bare)),
            floor: "—".into(),
            meets: None,
        });
    }
}

/// "a, b, c" of a stat's values in ms.
fn runs_ms(st: &Stat) -> String {
    st.values.iter().map(|v| ms(*v)).collect::<Vec<_>>().join(", ")
}

/// "; steal 0.12 cores (runs …)" when the hypervisor withheld CPU during the runs.
fn steal(s: &ScenarioSummary) -> String {
    if s.steal_cores.values.is_empty() {
        return String::new();
    }
    format!(
        "; steal {:.2} cores (runs {})",
        s.steal_cores.median,
        s.steal_cores.values.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(", ")
    )
}

/// The generated results section of docs/benchmarks.md.
pub fn suite_markdown(r: &SuiteResults) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "_Generated by `scripts/bench.sh{}` — do not edit by hand._\n",
        if r.quick { " --quick" } else { "" }
    );
    let _ = writeln!(s, "- **When**: {} (suite took {:.0} s)", r.started_at, r.total_s);
    let _ =
        writeln!(s, "- **Commit**: `{}`{}", r.git_commit, if r.git_dirty { " with uncommitted changes" } else { "" });
    let _ = writeln!(
        s,
        "- **Machine**: {} × {}, {:.1} GiB RAM, Linux {}, {}; {} at {} on the same machine",
        m.nproc, m.cpu_model, m.mem_total_gib, m.kernel, m.rustc, r.kafka_label, r.brokers
    );
    let _ = writeln!(
        s,
        "- **Runs**: {} s each ({} s warm-up not measured), {} repeats{}, scenarios alternating{}; loadgen sends from {} thread(s) unless a row says otherwise; service `{}` with RATE_LIMIT_RPS=0 and otherwise default settings (QUEUE_SIZE 10000, WORKER_POOL_SIZE 10){}",
        r.duration_s, r.warmup_s, r.repeats, more_repeats(r), steal_rule(r), r.loadgen_threads, r.service_bin,
        if r.quick { " — **--quick: short runs, for checking the harness, not for the record**" } else { "" }
    );
    if let Some(p) = r.peak_rps {
        let _ = writeln!(s, "- **Peak** used for the rate-based rows: {} req/s ({})", num(p), r.peak_source);
    }
    let _ = writeln!(
        s,
        "\n| Row | Measure | Result (median of alternating pairs) | Floor | Meets |\n|---|---|---|---|---|"
    );
    for row in rows(r) {
        let _ =
            writeln!(s, "| {} | {} | {} | {} | {} |", row.row, row.measure, row.result, row.floor, meets(row.meets));
    }

    let _ = writeln!(
        s,
        "\n**Per scenario** (medians over repeats; CV = coefficient of variation of throughput, or of p99 for open-loop runs; ⚠ = CV > 0.1)\n"
    );
    let _ = writeln!(s, "| Suite | Scenario | req/s | events/s | delivered events/s | p50 / p90 / p99 / max ms | CV | non-2xx | acked → delivered (missing, dup) | RSS idle / peak MiB | target CPU µs/event | cores: target / loadgen / broker / other / steal |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for suite in &r.suites {
        for x in &suite.result.summary {
            let _ = writeln!(
                s,
                "| {} {} | {} | {} | {} | {} | {} / {} / {} / {} | {}{} | {} | {} | {} / {} | {} | {} |",
                suite.row,
                suite.name,
                x.scenario,
                num(x.req_per_s.median),
                num(x.events_per_s.median),
                x.delivered_events_per_s.as_ref().map(|d| num(d.median)).unwrap_or_else(|| "n/a".into()),
                ms(x.p50_ms.median),
                ms(x.p90_ms.median),
                ms(x.p99_ms.median),
                ms(x.max_ms.median),
                cvs(x.headline_cv),
                if x.noisy { " ⚠" } else { "" },
                x.non_2xx,
                match (x.delivered, x.missing, x.duplicates) {
                    (Some(d), Some(m), Some(dup)) =>
                        format!("{} → {} ({m}, {dup})", num(x.acked as f64), num(d as f64)),
                    _ => format!("{} → n/a", num(x.acked as f64)),
                },
                mib(x.rss_idle_max_kib),
                mib(x.rss_peak_max_kib),
                if x.target_cpu_us_per_event.values.is_empty() {
                    "—".into()
                } else {
                    format!("{:.1}", x.target_cpu_us_per_event.median)
                },
                [&x.target_cores, &x.loadgen_cores, &x.broker_cores, &x.other_cores, &x.steal_cores]
                    .iter()
                    .map(|st| if st.values.is_empty() { "—".to_string() } else { format!("{:.2}", st.median) })
                    .collect::<Vec<_>>()
                    .join(" / "),
            );
        }
    }

    let mut notes = Vec::new();
    for suite in &r.suites {
        for f in &suite.result.failures {
            notes.push(format!("FAILED run: {f}"));
        }
        for run in &suite.result.set_aside {
            notes.push(format!(
                "{}: set aside with its round and run again (steal in this run {:.3} cores; a round is set aside when one of its runs had more than {})",
                run.label,
                run.cpu.as_ref().and_then(|c| c.steal_cores).unwrap_or(f64::NAN),
                suite.result.steal_limit
            ));
        }
        for run in suite.result.runs.iter().chain(&suite.result.set_aside) {
            let non_ok: Vec<String> = run
                .status_counts
                .iter()
                .filter(|(k, _)| !(k.starts_with('2') || k.as_str() == "delivered"))
                .map(|(k, v)| format!("{k} ×{v}"))
                .collect();
            if !non_ok.is_empty() {
                notes.push(format!("{}: {}", run.label, non_ok.join(", ")));
            }
            if let Some(e) = &run.exit {
                if e.log.warn + e.log.error + e.log.stderr_lines > 0 || !e.clean {
                    notes.push(format!(
                        "{}: service log {} WARN, {} ERROR, {} stderr lines; exit {}",
                        run.label, e.log.warn, e.log.error, e.log.stderr_lines, e.status
                    ));
                }
            }
            if let Some(v) = &run.verification {
                if v.missing > 0 || v.duplicates > 0 || v.unacked_delivered > 0 || v.dlq_records.unwrap_or(0) > 0 {
                    notes.push(format!(
                        "{}: missing {}, duplicates {}, delivered but unacknowledged {}, DLQ {}",
                        run.label,
                        v.missing,
                        v.duplicates,
                        v.unacked_delivered,
                        v.dlq_records.unwrap_or(0)
                    ));
                }
            }
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(s, "\n**Observations** (non-2xx answers, service warnings, delivery mismatches):\n");
        for n in notes.iter().take(40) {
            let _ = writeln!(s, "- {n}");
        }
        if notes.len() > 40 {
            let _ = writeln!(s, "- … {} more in the JSON results", notes.len() - 40);
        }
    }

    let _ = writeln!(s, "\n**Commands** (each row alone; `scripts/bench.sh` runs them all):\n");
    let _ = writeln!(s, "```sh");
    for suite in &r.suites {
        let _ = writeln!(s, "# {} {}: {}", suite.row, suite.name, suite.title);
        let _ = writeln!(s, "target/release/{}", suite.command);
    }
    let _ = writeln!(s, "```");
    s
}

/// How rounds short of CPU were handled, when the rule was on.
fn steal_rule(r: &SuiteResults) -> String {
    let Some(limit) = r.suites.first().map(|s| s.result.steal_limit).filter(|l| *l > 0.0) else {
        return String::new();
    };
    let n: usize = r.suites.iter().map(|s| s.result.set_aside.len()).sum();
    format!(
        "; a round during which the hypervisor withheld more than {limit} cores (steal) is set aside and run again, at most as many times as the suite has repeats ({n} runs set aside in this table, listed under Observations)"
    )
}

/// ", 5 for noop-overhead and overload-shed": the suites of this run given more repeats than the rest.
fn more_repeats(r: &SuiteResults) -> String {
    let mut by_count: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for run in &r.suites {
        if run.result.repeats > r.repeats {
            by_count.entry(run.result.repeats).or_default().push(&run.name);
        }
    }
    by_count.iter().map(|(n, names)| format!(", {n} for {}", names.join(" and "))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_near_its_floor_is_not_rounded_onto_the_other_side() {
        let at_least = |floor: f64| move |v: f64| v >= floor;
        assert_eq!(on_its_side(0.846, format!("{:.2}", 0.846), at_least(0.85)), "0.846");
        assert_eq!(on_its_side(0.853, format!("{:.2}", 0.853), at_least(0.85)), "0.85");
        assert_eq!(on_its_side(0.81, format!("{:.2}", 0.81), at_least(0.85)), "0.81");
        assert_eq!(on_its_side(0.2999, format!("{:.2}", 0.2999), at_least(0.3)), "0.2999");
        // Latencies: "≤ 8 ms" and "< 5 ms" floors, shown by `ms`.
        assert_eq!(on_its_side(8.004, ms(8.004), |v| v <= 8.0), "8.004");
        assert_eq!(on_its_side(7.994, ms(7.994), |v| v <= 8.0), "7.99");
        assert_eq!(on_its_side(4.996, ms(4.996), |v| v < 5.0), "4.996");
        assert_eq!(on_its_side(f64::NAN, ms(f64::NAN), |v| v < 5.0), "—");
    }

    #[test]
    fn numbers() {
        assert_eq!(num(1234567.4), "1,234,567");
        assert_eq!(num(999.0), "999");
        assert_eq!(num(f64::NAN), "—");
        assert_eq!(ms(1.234), "1.23");
        assert_eq!(ms(123.4), "123");
    }

    /// An overload suite's rounds: (the open-loop run's 2xx/s, its round's `peak` req/s if measured).
    fn overload_suite(rounds: &[(f64, Option<f64>)]) -> CompareResult {
        let run = |scenario: &str, req_per_s: f64, rate: Option<f64>| RunResult {
            scenario: scenario.into(),
            req_per_s,
            rate,
            connections: if rate.is_some() { 512 } else { 64 },
            ..Default::default()
        };
        let mut runs = Vec::new();
        for (round, &(goodput, peak)) in rounds.iter().enumerate() {
            runs.push((round, run("full", goodput, Some(60_000.0))));
            runs.extend(peak.map(|p| (round, run(PEAK, p, None))));
        }
        let names: &[&str] = if rounds.iter().any(|r| r.1.is_some()) { &["full", PEAK] } else { &["full"] };
        CompareResult::of_runs("overload", names, rounds.len(), runs, 0.0)
    }

    #[test]
    fn overload_goodput_is_judged_against_the_peak_of_its_own_rounds() {
        // The machine slows by a third after the earlier peak of 30,000 req/s; each round's peak slows with it.
        let c = overload_suite(&[(28_000.0, Some(29_000.0)), (20_000.0, Some(21_000.0)), (19_500.0, Some(20_000.0))]);
        let mut rows = Vec::new();
        overload_rows(&mut rows, &c, Some(30_000.0), "open loop at 2× peak", "peak", 1);
        let goodput = &rows[0];
        assert!(goodput.measure.contains("the same rounds' closed-loop peak at 64 conns"), "{}", goodput.measure);
        assert!(
            goodput.result.starts_with("**0.97** (pairs 0.97, 0.95, 0.97; against peak: 0.67;"),
            "{}",
            goodput.result
        );
        assert_eq!(goodput.meets, Some(true));

        // Without `peak` runs the earlier peak is all there is.
        let c = overload_suite(&[(28_000.0, None), (20_000.0, None), (19_500.0, None)]);
        let mut rows = Vec::new();
        overload_rows(&mut rows, &c, Some(30_000.0), "open loop at 2× peak", "peak", 1);
        assert!(rows[0].measure.ends_with("goodput (2xx/s) ÷ peak (30,000 req/s)"), "{}", rows[0].measure);
        assert!(rows[0].result.starts_with("**0.67** (20,000 2xx/s;"), "{}", rows[0].result);
        assert_eq!(rows[0].meets, Some(false));
    }
}
