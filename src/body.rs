//! Reading an HTTP answer's body up to a limit: Graph and the servers auditors check are
//! not trusted, and one that answers without end must meet a limit before our memory does.

/// The body of `resp`, or `None` once it is longer than `max` bytes (said up front by its
/// length, or found while reading). A body cut off part-way is the transport's error.
pub async fn at_most(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Ok(None);
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > max {
            return Ok(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Some(out))
}
