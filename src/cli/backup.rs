//! `idledger backup` and `idledger restore`: a stopped server's data dir into one file, and
//! back into a new data dir, every part checked before anything is written.

use super::progress;
use crate::backup::{backup_data_dir, restore as restore_file, Manifest};
use crate::error::Error;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `idledger backup`.
#[derive(Args, Debug)]
pub struct BackupArgs {
    /// A stopped server's data directory, or `--server` (online, token in IDLEDGER_TOKEN).
    #[command(flatten)]
    pub from: super::DataDir,
    /// The backup file to write (it must not exist).
    #[arg(long)]
    pub out: PathBuf,
}

/// Options of `idledger restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    pub from: PathBuf,
    /// The data directory to restore into (new or empty).
    #[arg(long)]
    pub data_dir: PathBuf,
}

fn refused(e: crate::backup::BackupError) -> Error {
    Error::Other(e.to_string())
}

/// Downloads `GET /v1/backup` into the new file `out`, then checks all of it (a file that
/// does not check is removed).
async fn download(url: &str, token: &str, out: &std::path::Path) -> Result<Manifest, Error> {
    use std::io::Write;
    let mut r = reqwest::Client::new()
        .get(format!("{}/v1/backup", url.trim_end_matches('/')))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| Error::Other(format!("{url}: {e}")))?;
    if !r.status().is_success() {
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        return Err(Error::Other(format!("{url}/v1/backup: {status}: {text}")));
    }
    let through = r
        .headers()
        .get("x-idledger-log-position")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let pb = progress::bytes_bar("backup");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)?;
    let mut w = std::io::BufWriter::new(&file);
    let fetched = async {
        while let Some(piece) = r.chunk().await.map_err(|e| Error::Other(e.to_string()))? {
            w.write_all(&piece)?;
            pb.inc(piece.len() as u64);
        }
        w.flush()?;
        file.sync_all()?;
        Ok::<_, Error>(())
    }
    .await;
    pb.finish_and_clear();
    let checked = fetched.and_then(|()| {
        crate::backup::read(std::fs::File::open(out)?, |_, _| Ok(()))
            .map(|c| c.manifest)
            .map_err(refused)
    });
    match checked {
        Ok(m) if through.is_none_or(|t| t == m.position) => Ok(m),
        Ok(m) => {
            let _ = std::fs::remove_file(out);
            Err(Error::Other(format!(
                "the server promised position {through:?}, the file ends at {}",
                m.position
            )))
        }
        Err(e) => {
            let _ = std::fs::remove_file(out);
            Err(e)
        }
    }
}

/// Writes the backup; prints its manifest's summary as one JSON line.
pub async fn backup(args: &BackupArgs) -> Result<ExitCode, Error> {
    let manifest = match args.from.source()? {
        crate::audit::Source::Server { url, token } => download(&url, &token, &args.out).await?,
        crate::audit::Source::DataDir(dir) => {
            let pb = progress::bar(None, "backup");
            let out = args.out.clone();
            let bar = pb.clone();
            let m = tokio::task::spawn_blocking(move || {
                backup_data_dir(&dir, &out, |p| bar.set_position(p), |n| bar.set_length(n))
                    .map_err(refused)
            })
            .await
            .map_err(|e| Error::Other(e.to_string()))??;
            pb.finish_and_clear();
            m
        }
    };
    println!(
        "{}",
        serde_json::json!({
            "backup": args.out.display().to_string(),
            "position": manifest.position,
            "head_hash": manifest.head_hash,
            "records": manifest.record_count,
            "chunks": manifest.chunks.len(),
            "contents_sha256": manifest.contents_sha256,
            "signed_tree_head": manifest.signed_tree_head.is_some(),
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// Restores, opens the restored log (every index rebuilt and checked), folds it into the
/// projections, and prints the head as one JSON line.
pub async fn restore(args: &RestoreArgs) -> Result<ExitCode, Error> {
    let pb = progress::bar(None, "restore");
    let (from, dir) = (args.from.clone(), args.data_dir.clone());
    let bar = pb.clone();
    let manifest = tokio::task::spawn_blocking(move || {
        restore_file(&from, &dir, |p| bar.set_position(p)).map_err(refused)
    })
    .await
    .map_err(|e| Error::Other(e.to_string()))??;
    pb.finish_and_clear();
    let head = {
        let log = crate::store::SledEventLog::open(&args.data_dir)?;
        let head = crate::store::EventLog::head(&*log);
        crate::store::EventLog::flush(&*log).await?;
        head
    };
    if head.position != manifest.position || head.hash.to_hex() != manifest.head_hash {
        return Err(Error::Other(format!(
            "the restored log ends at {} ({}), the manifest at {} ({})",
            head.position,
            head.hash.to_hex(),
            manifest.position,
            manifest.head_hash
        )));
    }
    // The log's writer task lets go of sled's lock shortly after the log is dropped.
    for _ in 0..500 {
        if crate::store::sled_log::open_raw(&args.data_dir).is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let source = crate::audit::Source::DataDir(args.data_dir.clone());
    let projections = crate::audit::chain::replay(&source, idledger_replay::Until::End, |_| {})?;
    println!(
        "{}",
        serde_json::json!({
            "restored": args.data_dir.display().to_string(),
            "position": head.position,
            "head_hash": head.hash.to_hex(),
            "records": manifest.record_count,
            "users": projections.users.len(),
            "domains": projections.domains.all().len(),
        })
    );
    Ok(ExitCode::SUCCESS)
}
