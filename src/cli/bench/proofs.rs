//! `idledger bench proofs`: provable history at scale. On a log of `--events` records
//! (filled when it holds fewer): the Merkle tree recomputed from the stored records on
//! every core in aligned ranges (`RawStore::tree`), against a bare scan of the same
//! records; then `idledger verify`'s own path over the data dir (`chain::verify`: every
//! record parsed, hashed and decoded on every core, the chain checked and each leaf
//! pushed into the `Verifier`'s `Frontier`, the kept heads held to it); then a `serve`
//! process answering inclusion and consistency proofs for random positions and sizes at a
//! fixed rate, against `/healthz` of the same process at the same rate (what HTTP alone
//! costs).

use super::api::{free_port, open_loop, percentile, wait_ready, Killed};
use super::{fill, reopen, round3};
use crate::audit::source::records_of_store;
use crate::error::Error;
use crate::store::parallel_decode::decoder_threads;
use crate::store::sled_log::RawStore;
use crate::store::{EventLog, SledEventLog};
use clap::Args;
use idledger_domain::Hash;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Options of `idledger bench proofs`.
#[derive(Args, Debug)]
pub struct ProofsArgs {
    /// Data directory; filled up to `--events` records, never wiped.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Records the log must hold.
    #[arg(long, default_value_t = 10_000_000)]
    pub events: u64,
    /// Proof requests per second of each fixed-rate phase.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Seconds of each phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
}

/// The tree of every stored record made from scratch, the records read and hashed on
/// every core, each reader hashing its aligned range up to the range's root: `(size,
/// root)`. Not what `verify` does (see [`verify_path`]): the tree alone, as fast as this
/// store gives it.
fn recompute(store: &RawStore) -> Result<(u64, Hash), Error> {
    let tree = store.tree(store.last_position()?, decoder_threads())?;
    Ok((tree.size(), tree.root()))
}

/// Every stored record read and its length summed: what reading alone costs.
fn scan(store: &RawStore) -> Result<u64, Error> {
    let mut bytes = 0u64;
    records_of_store(store)?(&mut |_, record| {
        bytes += record.len() as u64;
        std::ops::ControlFlow::Continue(())
    })?;
    Ok(bytes)
}

/// `idledger verify --data-dir`'s own work, timed: the chain, the encodings, the tree
/// (leaf by leaf into the `Verifier`'s `Frontier`) and the data dir's kept heads. Its
/// report must hold and count `size` records, or the figure would time a check that
/// stopped early.
fn verify_path(data_dir: &std::path::Path, size: u64) -> Result<f64, Error> {
    let source = crate::audit::Source::DataDir(data_dir.into());
    // The store just closed may not be free yet (as `reopen` waits for it).
    let mut tries = 0;
    let (report, seconds) = loop {
        let t = Instant::now();
        match crate::audit::chain::verify(&source, |_| {}) {
            Ok(report) => break (report, t.elapsed().as_secs_f64()),
            Err(_) if tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    };
    if !report.ok || report.events != size {
        return Err(Error::Other(format!(
            "verify of the bench's log did not hold over its {size} records: {}",
            report.summary_json()
        )));
    }
    Ok(seconds)
}

/// The path of the n-th request of a phase.
type PathOf = Box<dyn Fn(u64) -> String>;

/// A well-mixed number from `n` (splitmix64): random positions, the same every run.
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Runs `bench proofs`.
pub async fn proofs(args: ProofsArgs) -> Result<ExitCode, Error> {
    if args.events == 0 || args.rate == 0 || args.seconds == 0 || args.connections == 0 {
        return Err(Error::Other(
            "--events, --rate, --seconds and --connections must be positive".into(),
        ));
    }
    let token = {
        let log = SledEventLog::open(&args.data_dir)?;
        let have = log.head().position;
        if have < args.events {
            fill(&log, args.events - have).await?;
        }
        super::auditor_token(&log).await?
    };

    // The tree from scratch in aligned ranges; the bare scan after it. A first scan
    // brings the store into sled's cache, so neither pays for the disk alone.
    let store = reopen(&args.data_dir).await?;
    tokio::task::block_in_place(|| scan(&store))?;
    let (size, root, tree_s) = tokio::task::block_in_place(|| {
        let t = Instant::now();
        recompute(&store).map(|(size, root)| (size, root, t.elapsed().as_secs_f64()))
    })?;
    let scan_s = tokio::task::block_in_place(|| {
        let t = Instant::now();
        scan(&store).map(|_| t.elapsed().as_secs_f64())
    })?;
    drop(store);
    // `verify`'s own path opens the data dir itself: once the store above is closed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let verify_s = tokio::task::block_in_place(|| verify_path(&args.data_dir, size))?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let _serve = Killed(super::api::quiet_serve(&args.data_dir, port)?.spawn()?);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections * 4)
        .build()
        .map_err(|e| Error::Other(e.to_string()))?;
    wait_ready(&http, &url, Duration::from_secs(600)).await?;
    // The served head must be the tree just recomputed (plus nothing: the log is idle).
    let head: serde_json::Value = http
        .get(format!("{url}/v1/log/sth?format=json"))
        .bearer_auth(&token)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| Error::Other(e.to_string()))?
        .json()
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
    let served_size = head["tree_size"].as_u64().unwrap_or(0);
    use base64::Engine;
    let same_root = served_size == size
        && head["root_hash"].as_str()
            == Some(&base64::engine::general_purpose::STANDARD.encode(root.0));

    let mut phases = serde_json::Map::new();
    let paths: [(&str, PathOf); 3] = [
        ("healthz", Box::new(|_| "/healthz".to_owned())),
        (
            "inclusion",
            Box::new(move |n| {
                let position = mix(n) % served_size + 1;
                format!("/v1/log/proof/inclusion?position={position}&tree_size={served_size}")
            }),
        ),
        (
            "consistency",
            Box::new(move |n| {
                let from = mix(n) % served_size + 1;
                format!("/v1/log/proof/consistency?from={from}&to={served_size}")
            }),
        ),
    ];
    for (name, path) in paths {
        // A second of warm-up at the same rate, then the measured phase.
        open_loop(&http, &url, &token, &path, args.rate, 1, args.connections).await;
        let (mut ms, errors) = open_loop(
            &http,
            &url,
            &token,
            &path,
            args.rate,
            args.seconds,
            args.connections,
        )
        .await;
        ms.sort_by(|a, b| a.total_cmp(b));
        phases.insert(
            name.to_owned(),
            serde_json::json!({
                "requests": ms.len(),
                "errors": errors,
                "p50_ms": round3(percentile(&ms, 0.50)),
                "p99_ms": round3(percentile(&ms, 0.99)),
                "max_ms": round3(ms.last().copied().unwrap_or(0.0)),
            }),
        );
    }
    outln!(
        "{}",
        serde_json::json!({
            "bench": "proofs",
            "events": size,
            "threads": decoder_threads(),
            "tree_records_per_s": (size as f64 / tree_s).round(),
            "scan_records_per_s": (size as f64 / scan_s).round(),
            "tree_vs_scan": round3(scan_s / tree_s),
            "verify_records_per_s": (size as f64 / verify_s).round(),
            "served_head_is_the_recomputed_root": same_root,
            "rate": args.rate,
            "seconds": args.seconds,
            "phases": phases,
        })
    )?;
    Ok(ExitCode::SUCCESS)
}
