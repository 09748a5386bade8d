//! Provable history, checked from outside: every proof the server gives is held to a
//! second RFC 9162 implementation written here from the RFC's definitions (MTH, PATH,
//! PROOF and the two verification algorithms), every signed head to a signature check
//! done here with ed25519-dalek; then the auditor's commands against a server that
//! rewrites history, two servers that fork, and a server killed while it appends.

use crate::support::*;
use base64::Engine;
use proptest::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// RFC 9162 §2.1, from its recursive definitions: slow and obviously right.
mod rfc9162 {
    use super::*;

    pub type H = [u8; 32];

    pub fn leaf(record: &[u8]) -> H {
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(record);
        h.finalize().into()
    }

    pub fn node(left: &H, right: &H) -> H {
        let mut h = Sha256::new();
        h.update([1u8]);
        h.update(left);
        h.update(right);
        h.finalize().into()
    }

    /// The largest power of two smaller than `n` (n > 1).
    fn split(n: usize) -> usize {
        let mut k = 1;
        while k << 1 < n {
            k <<= 1;
        }
        k
    }

    /// MTH(D[n]) over leaf hashes.
    pub fn mth(d: &[H]) -> H {
        match d.len() {
            0 => Sha256::digest([]).into(),
            1 => d[0],
            n => {
                let k = split(n);
                node(&mth(&d[..k]), &mth(&d[k..]))
            }
        }
    }

    /// PATH(m, D[n]).
    pub fn path(m: usize, d: &[H]) -> Vec<H> {
        let n = d.len();
        if n <= 1 {
            return Vec::new();
        }
        let k = split(n);
        if m < k {
            let mut p = path(m, &d[..k]);
            p.push(mth(&d[k..]));
            p
        } else {
            let mut p = path(m - k, &d[k..]);
            p.push(mth(&d[..k]));
            p
        }
    }

    fn subproof(m: usize, d: &[H], b: bool) -> Vec<H> {
        let n = d.len();
        if m == n {
            return if b { Vec::new() } else { vec![mth(d)] };
        }
        let k = split(n);
        if m <= k {
            let mut p = subproof(m, &d[..k], b);
            p.push(mth(&d[k..]));
            p
        } else {
            let mut p = subproof(m - k, &d[k..], false);
            p.push(mth(&d[..k]));
            p
        }
    }

    /// PROOF(m, D[n]).
    pub fn proof(m: usize, d: &[H]) -> Vec<H> {
        subproof(m, d, true)
    }

    /// §2.1.3.2.
    pub fn verify_inclusion(index: u64, size: u64, leaf: &H, proof: &[H], root: &H) -> bool {
        if index >= size {
            return false;
        }
        let (mut f, mut s) = (index, size - 1);
        let mut r = *leaf;
        for p in proof {
            if s == 0 {
                return false;
            }
            if f & 1 == 1 || f == s {
                r = node(p, &r);
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            } else {
                r = node(&r, p);
            }
            f >>= 1;
            s >>= 1;
        }
        s == 0 && r == *root
    }

    /// §2.1.4.2.
    pub fn verify_consistency(first: u64, second: u64, old: &H, new: &H, proof: &[H]) -> bool {
        if first == 0 || first > second {
            return false;
        }
        if first == second {
            return proof.is_empty() && old == new;
        }
        if proof.is_empty() {
            return false;
        }
        let mut path = proof.to_vec();
        if first.is_power_of_two() {
            path.insert(0, *old);
        }
        let (mut f, mut s) = (first - 1, second - 1);
        while f & 1 == 1 {
            f >>= 1;
            s >>= 1;
        }
        let (mut fr, mut sr) = (path[0], path[0]);
        for c in &path[1..] {
            if s == 0 {
                return false;
            }
            if f & 1 == 1 || f == s {
                fr = node(c, &fr);
                sr = node(c, &sr);
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            } else {
                sr = node(&sr, c);
            }
            f >>= 1;
            s >>= 1;
        }
        fr == *old && sr == *new && s == 0
    }
}

use rfc9162::H;

/// The head in a C2SP checkpoint, its Ed25519 signature checked here against the verifier
/// key text (`name+keyid+base64(0x01 ‖ key)`): `(origin, size, root)`.
fn open_checkpoint(note: &str, vkey: &str) -> (String, u64, H) {
    let mut parts = vkey.trim().splitn(3, '+');
    let (name, id_hex, key_b64) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let key = B64.decode(key_b64).unwrap();
    assert_eq!(key[0], 1, "an Ed25519 verifier key");
    let mut id = Sha256::new();
    id.update(name.as_bytes());
    id.update(b"\n");
    id.update(&key);
    let id: [u8; 32] = id.finalize().into();
    assert_eq!(
        hex::encode(&id[..4]),
        id_hex,
        "the key id is its hash's first 4 bytes"
    );
    let (body, sigs) = note
        .split_once("\n\n")
        .expect("a blank line before the signatures");
    let body = format!("{body}\n");
    let line = sigs
        .lines()
        .find(|l| l.starts_with(&format!("\u{2014} {name} ")))
        .expect("a signature by the key");
    let sig = B64.decode(line.rsplit(' ').next().unwrap()).unwrap();
    assert_eq!(&sig[..4], &id[..4]);
    let verifying = ed25519_dalek::VerifyingKey::from_bytes(&key[1..].try_into().unwrap()).unwrap();
    let signature = ed25519_dalek::Signature::from_bytes(&sig[4..].try_into().unwrap());
    verifying
        .verify_strict(body.as_bytes(), &signature)
        .expect("the head's signature holds");
    let mut lines = body.lines();
    let origin = lines.next().unwrap().to_owned();
    assert_eq!(origin, name);
    let size = lines.next().unwrap().parse().unwrap();
    let root = B64
        .decode(lines.next().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    assert!(lines.next().unwrap().starts_with("Timestamp: "));
    (origin, size, root)
}

fn hashes(v: &Value) -> Vec<H> {
    v["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| B64.decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect()
}

/// Every stored record a server's feed gives, as leaf hashes.
async fn leaves_of(http: &reqwest::Client, url: &str, token: &str) -> Vec<H> {
    let mut out = Vec::new();
    let mut from = 1u64;
    loop {
        let page: Value = http
            .get(format!("{url}/v1/events?from_position={from}&limit=1000"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for item in page["items"].as_array().unwrap() {
            assert_eq!(item["position"], out.len() as u64 + 1);
            out.push(rfc9162::leaf(
                &B64.decode(item["record"].as_str().unwrap()).unwrap(),
            ));
        }
        match page["next"].as_str() {
            Some(n) => from = n.parse().unwrap(),
            None => return out,
        }
    }
}

async fn get_text(http: &reqwest::Client, url: &str, token: &str) -> (StatusCode, String) {
    let r = http.get(url).bearer_auth(token).send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

/// Waits until the server's latest head covers `size` records; answers its checkpoint.
async fn head_covering(http: &reqwest::Client, url: &str, token: &str, size: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, note) = get_text(http, &format!("{url}/v1/log/sth"), token).await;
        if s == StatusCode::OK && note.lines().nth(1).unwrap().parse::<u64>().unwrap() >= size {
            return note;
        }
        assert!(
            Instant::now() < deadline,
            "no head covers {size}: {s} {note}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_over_http_hold_for_an_independent_verifier() {
    let app = spawn_app().await;
    let admin = app.admin.clone();
    for n in 0..20 {
        app.domain(&format!("d{n}.example.com")).await;
    }
    let auditor = app.token("auditor", &[]).await;
    let head = app.head();
    let (s, vkey) = get_text(
        &app.http,
        &format!("{}/v1/log/public-key", app.url),
        &auditor,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let note = head_covering(&app.http, &app.url, &auditor, head).await;
    let leaves = leaves_of(&app.http, &app.url, &auditor).await;
    let (origin, size, root) = open_checkpoint(&note, &vkey);
    assert!(origin.starts_with("idledger/"));
    assert_eq!(size as usize, leaves.len());
    assert_eq!(
        root,
        rfc9162::mth(&leaves),
        "the signed root is the records' MTH"
    );

    // The JSON form carries the same head.
    let (s, j) = app
        .call(Some(&auditor), Method::GET, "/v1/log/sth?format=json", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(j["tree_size"], size);
    assert_eq!(j["root_hash"], B64.encode(root));
    assert_eq!(j["checkpoint"], note.as_str());
    assert!(j["timestamp"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(note.contains(j["signature"].as_str().unwrap()));
    let (s, kept) = app
        .call(
            Some(&auditor),
            Method::GET,
            &format!("/v1/log/sth/{size}?format=json"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{kept}");
    assert_eq!(kept["root_hash"], j["root_hash"]);

    // Every inclusion proof of every position in every tree size, and every consistency
    // proof between every two sizes: equal to the RFC's PATH and PROOF, and holding.
    let n = leaves.len();
    for size in 1..=n {
        let root = rfc9162::mth(&leaves[..size]);
        for index in 0..size {
            let (s, p) = app
                .call(
                    Some(&auditor),
                    Method::GET,
                    &format!(
                        "/v1/log/proof/inclusion?position={}&tree_size={size}",
                        index + 1
                    ),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{p}");
            assert_eq!(p["leaf_index"], index);
            assert_eq!(p["tree_size"], size);
            let path = hashes(&p);
            assert_eq!(
                path,
                rfc9162::path(index, &leaves[..size]),
                "PATH({index}, {size})"
            );
            assert!(rfc9162::verify_inclusion(
                index as u64,
                size as u64,
                &leaves[index],
                &path,
                &root
            ));
        }
        for from in 1..=size {
            let (s, p) = app
                .call(
                    Some(&auditor),
                    Method::GET,
                    &format!("/v1/log/proof/consistency?from={from}&to={size}"),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{p}");
            assert_eq!(
                (p["from"].clone(), p["to"].clone()),
                (json!(from), json!(size))
            );
            let proof = hashes(&p);
            assert_eq!(
                proof,
                rfc9162::proof(from, &leaves[..size]),
                "PROOF({from}, {size})"
            );
            assert!(rfc9162::verify_consistency(
                from as u64,
                size as u64,
                &rfc9162::mth(&leaves[..from]),
                &root,
                &proof
            ));
        }
    }

    // An export's manifest carries a head the server keeps (an auditor finds it among
    // the heads, in time order with them) that covers its position, and the consistency
    // proof from the tree the export read to it.
    let (s, m) = app
        .call(
            Some(&auditor),
            Method::GET,
            "/v1/audit/exports/events/manifest",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    let at = m["log_position"].as_u64().unwrap() as usize;
    let checkpoint = m["signed_head"]["checkpoint"].as_str().unwrap();
    let (_, signed, root) = open_checkpoint(checkpoint, &vkey);
    assert!(signed as usize >= at, "{m}");
    let (s, kept) = app
        .call(
            Some(&auditor),
            Method::GET,
            &format!("/v1/log/sth/{signed}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "the manifest's head is not kept: {m}");
    assert_eq!(kept.as_str(), Some(checkpoint));
    let leaves = leaves_of(&app.http, &app.url, &auditor).await;
    assert_eq!(root, rfc9162::mth(&leaves[..signed as usize]));
    let proof = hashes(&json!({"hashes": m["signed_head"]["consistency"]}));
    if signed as usize == at {
        assert!(proof.is_empty(), "{m}");
    } else {
        assert!(rfc9162::verify_consistency(
            at as u64,
            signed,
            &rfc9162::mth(&leaves[..at]),
            &root,
            &proof
        ));
    }

    // Bad asks are refused plainly.
    for bad in [
        "/v1/log/proof/inclusion?position=0&tree_size=3",
        &format!("/v1/log/proof/inclusion?position=3&tree_size={}", n + 1000),
        "/v1/log/proof/inclusion?position=5&tree_size=4",
        "/v1/log/proof/inclusion?position=x",
        "/v1/log/proof/inclusion?position=1&surprise=1",
        "/v1/log/proof/consistency?from=0&to=3",
        "/v1/log/proof/consistency?from=4&to=3",
        &format!("/v1/log/proof/consistency?from=1&to={}", n + 1000),
        "/v1/log/sth?format=xml",
        "/v1/log/sths?limit=0",
        "/v1/log/sth/abc",
    ] {
        let (s, body) = app.call(Some(&auditor), Method::GET, bad, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"]["message"].is_string(), "{bad}: {body}");
    }
    let (s, _) = app
        .call(Some(&auditor), Method::GET, "/v1/log/sth/999999", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app.call(None, Method::GET, "/v1/log/sth", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // The kept heads page, each one signed and each root the records' MTH at its size.
    let mut after = 0;
    let mut seen = 0;
    loop {
        let (s, page) = app
            .call(
                Some(&admin),
                Method::GET,
                &format!("/v1/log/sths?after={after}&limit=2"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{page}");
        for item in page["items"].as_array().unwrap() {
            let (_, size, root) = open_checkpoint(item["checkpoint"].as_str().unwrap(), &vkey);
            assert!(size > after);
            assert_eq!(root, rfc9162::mth(&leaves[..size as usize]));
            after = size;
            seen += 1;
        }
        if page["next"].is_null() {
            break;
        }
    }
    assert!(seen >= 1);
}

/// One tree the server's own code keeps (the store's `LogTree`), for the property tests.
fn server_tree() -> &'static (tempfile::TempDir, idledger::store::tree::LogTree, Vec<H>) {
    static TREE: std::sync::OnceLock<(tempfile::TempDir, idledger::store::tree::LogTree, Vec<H>)> =
        std::sync::OnceLock::new();
    TREE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let tree = idledger::store::tree::LogTree::open(dir.path(), 0, |_| unreachable!()).unwrap();
        let leaves: Vec<H> = (0..1500u32)
            .map(|i| rfc9162::leaf(format!("record {i}").as_bytes()))
            .collect();
        // Appended in groups of varying size, as group commits do.
        let mut at = 0;
        let mut group = 1;
        while at < leaves.len() {
            let end = (at + group).min(leaves.len());
            let batch: Vec<_> = leaves[at..end]
                .iter()
                .map(|h| idledger_domain::Hash(*h))
                .collect();
            tree.append(&batch);
            at = end;
            group = group % 97 + 13;
        }
        assert_eq!(tree.size(), 1500);
        (dir, tree, leaves)
    })
}

fn flip(h: &H, bit: usize) -> H {
    let mut h = *h;
    h[bit / 8 % 32] ^= 1 << (bit % 8);
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_inclusion_proof_holds_and_no_flipped_bit_does(
        size in 1usize..=1500, at in any::<prop::sample::Index>(),
        which in any::<prop::sample::Index>(), bit in 0usize..256,
    ) {
        let (_, tree, leaves) = server_tree();
        let index = at.index(size);
        let d = &leaves[..size];
        let root = rfc9162::mth(d);
        prop_assert_eq!(tree.root(size as u64).unwrap().0, root);
        let proof: Vec<H> = tree.inclusion(index as u64, size as u64).unwrap().into_iter().map(|h| h.0).collect();
        prop_assert_eq!(&proof, &rfc9162::path(index, d));
        let ours = |proof: &[H], leaf: &H, root: &H| {
            let proof: Vec<_> = proof.iter().map(|h| idledger_domain::Hash(*h)).collect();
            idledger_replay::tree::check_inclusion(&proof, size as u64, &idledger_domain::Hash(*root), index as u64, &idledger_domain::Hash(*leaf)).is_ok()
        };
        prop_assert!(rfc9162::verify_inclusion(index as u64, size as u64, &d[index], &proof, &root));
        prop_assert!(ours(&proof, &d[index], &root));
        // One bit flipped anywhere: in a proof hash, the leaf or the root.
        let spot = which.index(proof.len() + 2);
        let (mut p, mut leaf, mut r) = (proof.clone(), d[index], root);
        match spot {
            s if s < proof.len() => p[s] = flip(&p[s], bit),
            s if s == proof.len() => leaf = flip(&leaf, bit),
            _ => r = flip(&r, bit),
        }
        prop_assert!(!rfc9162::verify_inclusion(index as u64, size as u64, &leaf, &p, &r));
        prop_assert!(!ours(&p, &leaf, &r));
        // A proof cut short or lengthened fails too.
        if !proof.is_empty() {
            prop_assert!(!ours(&proof[..proof.len() - 1], &d[index], &root));
        }
        let mut longer = proof.clone();
        longer.push(root);
        prop_assert!(!ours(&longer, &d[index], &root));
    }

    #[test]
    fn every_consistency_proof_holds_and_no_flipped_bit_does(
        to in 1usize..=1500, from_at in any::<prop::sample::Index>(),
        which in any::<prop::sample::Index>(), bit in 0usize..256,
    ) {
        let (_, tree, leaves) = server_tree();
        let from = from_at.index(to) + 1;
        let (old, new) = (rfc9162::mth(&leaves[..from]), rfc9162::mth(&leaves[..to]));
        let proof: Vec<H> = tree.consistency(from as u64, to as u64).unwrap().into_iter().map(|h| h.0).collect();
        prop_assert_eq!(&proof, &rfc9162::proof(from, &leaves[..to]));
        let ours = |proof: &[H], old: &H, new: &H| {
            let proof: Vec<_> = proof.iter().map(|h| idledger_domain::Hash(*h)).collect();
            idledger_replay::tree::check_consistency(&proof, from as u64, &idledger_domain::Hash(*old), to as u64, &idledger_domain::Hash(*new)).is_ok()
        };
        prop_assert!(rfc9162::verify_consistency(from as u64, to as u64, &old, &new, &proof));
        prop_assert!(ours(&proof, &old, &new));
        let spot = which.index(proof.len() + 2);
        let (mut p, mut o, mut n) = (proof.clone(), old, new);
        match spot {
            s if s < proof.len() => p[s] = flip(&p[s], bit),
            s if s == proof.len() => o = flip(&o, bit),
            _ => n = flip(&n, bit),
        }
        prop_assert!(!rfc9162::verify_consistency(from as u64, to as u64, &o, &n, &p));
        prop_assert!(!ours(&p, &o, &n));
    }
}

/// RFC 6962's reference leaves, as Certificate Transparency's test suites use them.
const CT_RECORDS: [&[u8]; 8] = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
];

fn unhex(h: &str) -> H {
    hex::decode(h).unwrap().try_into().unwrap()
}

/// Known answers: the roots of RFC 6962's reference data (Certificate Transparency's
/// test vectors) over the eight leaves below, for every prefix; and RFC 9162's worked
/// example (§2.1.5), whose audit paths and consistency proofs the RFC gives by the names
/// of the tree's nodes, checked here node by node.
#[test]
fn the_reference_verifier_gives_the_known_roots() {
    let roots = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    let leaves: Vec<H> = CT_RECORDS.iter().map(|r| rfc9162::leaf(r)).collect();
    for (n, want) in roots.iter().enumerate() {
        assert_eq!(
            hex::encode(rfc9162::mth(&leaves[..n + 1])),
            *want,
            "size {}",
            n + 1
        );
    }
    // RFC 9162 §2.1.5's tree of seven leaves d0..d6: leaves a b c d e f j, inner nodes
    // g = (a, b), h = (c, d), i = (e, f), k = (g, h), l = (i, j).
    let d = &leaves[..7];
    let [a, b, c, dd, e, f, j] = [d[0], d[1], d[2], d[3], d[4], d[5], d[6]];
    let (g, h, i) = (
        rfc9162::node(&a, &b),
        rfc9162::node(&c, &dd),
        rfc9162::node(&e, &f),
    );
    let (k, l) = (rfc9162::node(&g, &h), rfc9162::node(&i, &j));
    assert_eq!(rfc9162::node(&k, &l), rfc9162::mth(d), "the root is (k, l)");
    // "The audit path for d0 is [b, h, l]", "for d3 is [c, g, l]", "for d4 is [f, j,
    // k]", "for d6 is [i, k]".
    for (index, want) in [
        (0, vec![b, h, l]),
        (3, vec![c, g, l]),
        (4, vec![f, j, k]),
        (6, vec![i, k]),
    ] {
        assert_eq!(rfc9162::path(index, d), want, "the audit path of d{index}");
        assert!(rfc9162::verify_inclusion(
            index as u64,
            7,
            &d[index],
            &want,
            &rfc9162::mth(d)
        ));
    }
    // "PROOF(3, D[7]) = [c, d, g, l]", "PROOF(4, D[7]) = [l]", "PROOF(6, D[7]) = [i, j,
    // k]".
    for (m, want) in [(3, vec![c, dd, g, l]), (4, vec![l]), (6, vec![i, j, k])] {
        assert_eq!(rfc9162::proof(m, d), want, "PROOF({m}, D[7])");
        assert!(rfc9162::verify_consistency(
            m as u64,
            7,
            &rfc9162::mth(&d[..m]),
            &rfc9162::mth(d),
            &want
        ));
    }
}

/// Published inclusion proofs over [`CT_RECORDS`]: `(leaf index, tree size, audit path)`.
/// Certificate Transparency's reference vectors, as transparency-dev/merkle publishes
/// them (`proof/verify_test.go`, `inclusionProofs`, whose leaf numbers count from 1: the
/// indices here are theirs minus one), from google/certificate-transparency's
/// `merkle_tree_test.cc`.
const CT_INCLUSION: [(usize, usize, &[&str]); 5] = [
    (0, 1, &[]),
    (
        0,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        3,
        &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    ),
    (
        1,
        5,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];

/// Published consistency proofs over [`CT_RECORDS`]: `(old size, new size, proof)`, from
/// the same file (`consistencyProofs`).
const CT_CONSISTENCY: [(usize, usize, &[&str]); 5] = [
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

/// The server's own proofs (`LogTree`, which `/v1/log/proof/*` answers from: a log's
/// records are encoded envelopes, so no log over these leaves can be served) over
/// Certificate Transparency's reference leaves: equal, hash by hash, to the published
/// vectors above, and those hold for both this file's verifier and the auditor's
/// (`idledger_replay::tree`). The published vectors cover a few sizes only; for every
/// other proof over the eight leaves the expected hashes are computed here, by this
/// file's RFC 9162 implementation (independent of the server's, but not published).
#[test]
fn the_server_gives_certificate_transparencys_published_proofs() {
    use idledger_domain::Hash;
    let leaves: Vec<H> = CT_RECORDS.iter().map(|r| rfc9162::leaf(r)).collect();
    let dir = tempfile::tempdir().unwrap();
    let tree = idledger::store::tree::LogTree::open(dir.path(), 0, |_| unreachable!()).unwrap();
    let batch: Vec<Hash> = leaves.iter().map(|h| Hash(*h)).collect();
    // Two group commits, one ending mid-subtree.
    tree.append(&batch[..3]);
    tree.append(&batch[3..]);
    let unhexed = |hashes: &[&str]| hashes.iter().map(|h| unhex(h)).collect::<Vec<H>>();
    let plain = |hashes: Vec<Hash>| hashes.into_iter().map(|h| h.0).collect::<Vec<H>>();
    let ours = |hashes: &[H]| hashes.iter().map(|h| Hash(*h)).collect::<Vec<Hash>>();
    for (index, size, published) in CT_INCLUSION {
        let want = unhexed(published);
        let root = rfc9162::mth(&leaves[..size]);
        let served = plain(tree.inclusion(index as u64, size as u64).unwrap());
        assert_eq!(served, want, "the server's PATH({index}, {size})");
        assert_eq!(rfc9162::path(index, &leaves[..size]), want);
        assert!(rfc9162::verify_inclusion(
            index as u64,
            size as u64,
            &leaves[index],
            &want,
            &root
        ));
        idledger_replay::tree::check_inclusion(
            &ours(&want),
            size as u64,
            &Hash(root),
            index as u64,
            &Hash(leaves[index]),
        )
        .unwrap_or_else(|e| panic!("PATH({index}, {size}): {e}"));
        if let Some(first) = want.first() {
            let mut bent = want.clone();
            bent[0] = flip(first, 3);
            assert!(idledger_replay::tree::check_inclusion(
                &ours(&bent),
                size as u64,
                &Hash(root),
                index as u64,
                &Hash(leaves[index]),
            )
            .is_err());
        }
    }
    for (from, to, published) in CT_CONSISTENCY {
        let want = unhexed(published);
        let (old, new) = (rfc9162::mth(&leaves[..from]), rfc9162::mth(&leaves[..to]));
        let served = plain(tree.consistency(from as u64, to as u64).unwrap());
        assert_eq!(served, want, "the server's PROOF({from}, {to})");
        assert_eq!(rfc9162::proof(from, &leaves[..to]), want);
        assert!(rfc9162::verify_consistency(
            from as u64,
            to as u64,
            &old,
            &new,
            &want
        ));
        idledger_replay::tree::check_consistency(
            &ours(&want),
            from as u64,
            &Hash(old),
            to as u64,
            &Hash(new),
        )
        .unwrap_or_else(|e| panic!("PROOF({from}, {to}): {e}"));
        if let Some(first) = want.first() {
            let mut bent = want.clone();
            bent[0] = flip(first, 4);
            assert!(idledger_replay::tree::check_consistency(
                &ours(&bent),
                from as u64,
                &Hash(old),
                to as u64,
                &Hash(new),
            )
            .is_err());
        }
    }
    // Every other proof over the eight leaves: computed independently here, not
    // published.
    for size in 1..=8usize {
        assert_eq!(
            tree.root(size as u64).unwrap().0,
            rfc9162::mth(&leaves[..size])
        );
        for index in 0..size {
            let served = plain(tree.inclusion(index as u64, size as u64).unwrap());
            assert_eq!(
                served,
                rfc9162::path(index, &leaves[..size]),
                "PATH({index}, {size})"
            );
        }
        for from in 1..=size {
            let served = plain(tree.consistency(from as u64, size as u64).unwrap());
            assert_eq!(
                served,
                rfc9162::proof(from, &leaves[..size]),
                "PROOF({from}, {size})"
            );
        }
    }
}

/// `idledger prove` of `position` against `serve`, with `key`.
fn prove(serve: &Serve, key: &str, position: &str) -> (Value, i32) {
    auditor_cli(
        &serve.token,
        &[
            "prove",
            "--server",
            &serve.url,
            "--position",
            position,
            "--public-key",
            key,
        ],
    )
}

/// `idledger <args>` with the token set; its JSON line and exit code.
fn auditor_cli(token: &str, args: &[&str]) -> (Value, i32) {
    let (json, code, _) = auditor_cli_said(token, args);
    (json, code)
}

/// [`auditor_cli`], and what the command said on stderr.
fn auditor_cli_said(token: &str, args: &[&str]) -> (Value, i32, String) {
    let out = idledger()
        .env("IDLEDGER_TOKEN", token)
        .args(args)
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {line:?} {stderr}"));
    (json, out.status.code().unwrap_or(-1), stderr)
}

/// An auditor's visit: `verify --server --checkpoint`; its report and exit code.
fn visit(serve: &Serve, checkpoint: &str, key: &str) -> (Value, i32) {
    auditor_cli(
        &serve.token,
        &[
            "verify",
            "--server",
            &serve.url,
            "--checkpoint",
            checkpoint,
            "--public-key",
            key,
        ],
    )
}

/// A new auditor token of `app`, and the log's public key as the server publishes it.
async fn auditor_and_log_key(app: &App) -> (String, String) {
    let auditor = app.token("auditor", &[]).await;
    let url = format!("{}/v1/log/public-key", app.url);
    let (s, key) = get_text(&app.http, &url, &auditor).await;
    assert_eq!(s, StatusCode::OK, "{key}");
    (auditor, key)
}

/// An auditor's visit to `url` (`verify --server --checkpoint`) on a blocking thread, so
/// that an in-process server answers meanwhile; its output.
fn visit_in_background(
    url: &str,
    token: &str,
    key: &str,
    checkpoint: &Path,
    env: &[(&str, &str)],
) -> tokio::task::JoinHandle<std::process::Output> {
    let mut cmd = idledger();
    cmd.env("IDLEDGER_TOKEN", token)
        .envs(env.iter().copied())
        .args(["verify", "--server", url, "--checkpoint"])
        .arg(checkpoint)
        .args(["--public-key", key]);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
}

/// A busy server (its places for whole-log reads taken, by a backup's stream, say) is
/// waited for; one that stays busy is "nothing could be checked" (exit 2), never a
/// history that fails its heads (exit 1 naming a tree size), and the checkpoint stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_server_is_waited_for_and_never_taken_for_a_failed_history() {
    let app = spawn_app().await;
    for n in 0..5 {
        app.domain(&format!("busy{n}.example.com")).await;
    }
    let (auditor, vkey) = auditor_and_log_key(&app).await;
    head_covering(&app.http, &app.url, &auditor, app.head()).await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("auditor.checkpoint");
    let visit = |wait: &str| {
        let wait = [("IDLEDGER_BUSY_WAIT_SECS", wait)];
        visit_in_background(&app.url, &auditor, &vkey, &checkpoint, &wait)
    };
    let first = visit("60").await.unwrap();
    assert_eq!(first.status.code(), Some(0), "{first:?}");

    let take = || {
        app.state
            .whole_log_reads
            .clone()
            .try_acquire_many_owned(idledger::http::WHOLE_LOG_READS as u32)
            .unwrap()
    };
    let taken = take();
    let waited = visit("60");
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(taken);
    let waited = waited.await.unwrap();
    assert_eq!(waited.status.code(), Some(0), "{waited:?}");
    let kept = std::fs::read_to_string(&checkpoint).unwrap();

    let _taken = take();
    let gave_up = visit("2").await.unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&gave_up.stdout),
        String::from_utf8_lossy(&gave_up.stderr),
    );
    assert_eq!(gave_up.status.code(), Some(2), "{out} {err}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["checked"], false, "{out}");
    assert!(line["error"].as_str().unwrap().contains("503"), "{out}");
    assert!(!out.contains("first_inconsistent_tree_size"), "{out}");
    assert!(err.contains("503"), "{err}");
    assert_eq!(std::fs::read_to_string(&checkpoint).unwrap(), kept);
}

/// More heads than one page of `/v1/log/sths`: the visit pages through them, merged in
/// size order with the latest and the auditor's own, and holds; heads signed while it
/// reads do not fail it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visit_over_more_than_a_page_of_heads_holds() {
    let app = spawn_app().await;
    let (auditor, vkey) = auditor_and_log_key(&app).await;
    let grow = |n: usize, from: usize| {
        let app = &app;
        async move {
            for i in from..from + n {
                app.domain(&format!("page{i}.example.com")).await;
                let notary = app.state.notary.clone();
                tokio::task::spawn_blocking(move || notary.sign_now().unwrap())
                    .await
                    .unwrap();
            }
        }
    };
    grow(600, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("auditor.checkpoint");
    let visit = || visit_in_background(&app.url, &auditor, &vkey, &checkpoint, &[]);
    let first = visit().await.unwrap();
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    grow(500, 600).await;
    let kept = app.state.notary.after(0, 5000).unwrap().len();
    assert!(kept >= 1000, "{kept} heads kept: one page");
    // Heads signed as the visit reads.
    let second = visit();
    grow(20, 1100).await;
    let second = second.await.unwrap();
    let report: Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(second.status.code(), Some(0), "{report}");
    assert_eq!(report["ok"], true, "{report}");
}

/// Records one added domain appends: it is registered with its workstation certificate.
const PER_DOMAIN: u64 = 2;

async fn add_domains(serve: &Serve, names: &[&str]) {
    for name in names {
        serve
            .call(Method::POST, "/v1/domains", Some(json!({"domain": name})))
            .await;
    }
}

/// The number of records a server holds.
async fn head_of(serve: &Serve) -> u64 {
    leaves_of(&serve.http, &serve.url, &serve.token).await.len() as u64
}

/// The sizes of every head a server kept.
async fn kept_sizes(serve: &Serve) -> Vec<u64> {
    let page = serve
        .call(Method::GET, "/v1/log/sths?limit=1000", None)
        .await;
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["tree_size"].as_u64().unwrap())
        .collect()
}

fn public_key_of(data: &Path) -> String {
    let out = idledger()
        .arg("log-key")
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Rewrites the record at `position` (its time moved by a microsecond) and chains every
/// later record to it again: a history rewritten so its hash chain still holds.
fn rewrite_history(data: &Path, position: u64) {
    let store = idledger::store::sled_log::open_raw(data).unwrap();
    let last = store.last_position().unwrap();
    let mut prev = idledger_domain::decode_record(&store.record(position - 1).unwrap())
        .unwrap()
        .hash;
    for p in position..=last {
        let env = idledger_domain::decode_record(&store.record(p).unwrap()).unwrap();
        let proposed = idledger_domain::ProposedEvent {
            event_id: env.event_id,
            actor: env.actor.clone(),
            correlation_id: env.correlation_id,
            causation_id: env.causation_id,
            event: env.event.clone(),
        };
        let shift = if p == position {
            chrono::Duration::microseconds(1)
        } else {
            chrono::Duration::zero()
        };
        let (bytes, hash) = idledger_domain::encode_record(
            idledger_domain::RecordFields {
                position: p,
                stream: &env.stream,
                version: env.version,
                recorded_at: env.recorded_at + shift,
                proposed: &proposed,
            },
            &prev,
        )
        .unwrap();
        store.damage(p, Some(&bytes)).unwrap();
        prev = hash;
    }
}

/// The tree's files are derived from the log: damaged, they are made again from the
/// records at start, not taken for another history (which would stop `serve`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_tree_file_is_made_again_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fast = [("IDLEDGER_STH_INTERVAL_MS", "10")];
    let mut serve = Serve::start_with(&data, None, &fast).await;
    add_domains(&serve, &["a.example.com", "b.example.com", "c.example.com"]).await;
    let head = head_of(&serve).await;
    head_covering(&serve.http, &serve.url, &serve.token, head).await;
    let note = serve.get("/v1/log/sth").await.text().await.unwrap();
    serve.stop();
    // One leaf in the middle, not the last (which the open checks on its own).
    let leaves = data.join("tree").join("leaves");
    let mut bytes = std::fs::read(&leaves).unwrap();
    assert!(bytes.len() >= 3 * 32, "{}", bytes.len());
    bytes[32 + 7] ^= 0x40;
    std::fs::write(&leaves, &bytes).unwrap();
    let serve = Serve::start_with(&data, None, &fast).await;
    assert_eq!(serve.get("/v1/log/sth").await.text().await.unwrap(), note);
    let key = public_key_of(&data);
    let (proved, code) = prove(&serve, &key, "2");
    assert_eq!(code, 0, "{proved}");
}

/// A record no signed head covers yet (the server signs at most every
/// `sth_interval_ms`) is no finding: `prove` waits a little, then says it could not
/// check (exit 2), never that the history fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_not_yet_signed_is_unanswered_not_a_finding() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let slow = [("IDLEDGER_STH_INTERVAL_MS", "3600000")];
    let serve = Serve::start_with(&data, None, &slow).await;
    add_domains(&serve, &["a.example.com", "b.example.com"]).await;
    let note = serve.get("/v1/log/sth").await.text().await.unwrap();
    let signed: u64 = note.lines().nth(1).unwrap().parse().unwrap();
    let head = head_of(&serve).await;
    assert!(head > signed, "{head}: {note}");
    let key = public_key_of(&data);
    let (report, code) = prove(&serve, &key, &head.to_string());
    assert_eq!(code, 2, "{report}");
    assert_eq!(report["checked"], false, "{report}");
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("not yet in the latest signed head"),
        "{report}"
    );
    // An export to that position needs no wait: its manifest's head is signed on request.
    let out = dir.path().join("events.jsonl");
    let (written, code) = auditor_cli(
        &serve.token,
        &[
            "export",
            "--server",
            &serve.url,
            "--kind",
            "events",
            "--format",
            "jsonl",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{written}");
    assert_eq!(written["log_position"], head, "{written}");
    assert!(
        written["signed_tree_size"].as_u64().unwrap() >= head,
        "{written}"
    );
    // And that head is kept: prove answers now.
    let (proved, code) = prove(&serve, &key, &head.to_string());
    assert_eq!(code, 0, "{proved}");
    let refused = serve.get("/v1/log/sth?covering=0").await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_history_is_caught_on_the_next_visit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fast = [("IDLEDGER_STH_INTERVAL_MS", "10")];
    let mut serve = Serve::start_with(&data, None, &fast).await;
    add_domains(&serve, &["a.example.com", "b.example.com", "c.example.com"]).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    add_domains(&serve, &["d.example.com", "e.example.com"]).await;
    let head = head_of(&serve).await;
    head_covering(&serve.http, &serve.url, &serve.token, head).await;
    let key = public_key_of(&data);
    let checkpoint = dir.path().join("auditor.checkpoint");
    let cp = checkpoint.to_str().unwrap();
    let (first, code) = visit(&serve, cp, &key);
    assert_eq!(code, 0, "{first}");
    assert_eq!(first["previous_tree_size"], Value::Null);
    assert_eq!(first["tree_size"], head);

    // The auditor proves a record offline against the head they accepted.
    let (proved, code) = auditor_cli(
        &serve.token,
        &[
            "prove",
            "--server",
            &serve.url,
            "--position",
            "2",
            "--public-key",
            &key,
            "--checkpoint",
            cp,
        ],
    );
    assert_eq!(code, 0, "{proved}");
    assert_eq!(proved["kind"], "DomainRegistered");
    // With another log's key, nothing is accepted.
    let other =
        idledger_replay::tree::LogSigningKey::from_seed("idledger/other", &[7; 32]).unwrap();
    let (refused, code) = auditor_cli(
        &serve.token,
        &[
            "prove",
            "--server",
            &serve.url,
            "--position",
            "2",
            "--public-key",
            &other.public().to_string(),
        ],
    );
    assert_ne!(code, 0, "{refused}");

    // A second visit after more appends: consistent.
    add_domains(&serve, &["f.example.com"]).await;
    head_covering(&serve.http, &serve.url, &serve.token, head + 1).await;
    let (second, code) = visit(&serve, cp, &key);
    assert_eq!(code, 0, "{second}");
    assert_eq!(second["previous_tree_size"], head);
    let kept = kept_sizes(&serve).await;
    serve.stop();

    // The operator rewrites record 3 (chain re-made, so the chain alone still holds).
    rewrite_history(&data, 3);
    // The chain alone still holds; the heads the data dir kept do not.
    let first_bad = *kept.iter().find(|&&s| s >= 3).unwrap();
    let (local, code) = verify(&data);
    assert_eq!(code, 1, "{local}");
    assert_eq!(local["first_inconsistent_tree_size"], first_bad, "{local}");
    // The server will not sign the rewritten history under the key of the first.
    let refused = idledger()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("another history"), "{said}");
    // An operator who also throws its signed heads away gets it to start: the auditor's
    // checkpoint is what catches them then.
    std::fs::remove_file(data.join("tree").join("heads")).unwrap();
    let mut serve = Serve::start_with(&data, None, &fast).await;
    add_domains(&serve, &["g.example.com"]).await;
    let head = head_of(&serve).await;
    head_covering(&serve.http, &serve.url, &serve.token, head).await;
    let before = std::fs::read_to_string(&checkpoint).unwrap();
    let (caught, code) = visit(&serve, cp, &key);
    assert_eq!(code, 1, "{caught}");
    assert_eq!(caught["ok"], false);
    // Its heads gone, the server knows none older: the auditor's own head is the first
    // the records contradict.
    assert_eq!(
        caught["first_inconsistent_tree_size"], second["tree_size"],
        "{caught} (kept {kept:?})"
    );
    assert!(caught["reason"].is_string());
    // The checkpoint is kept as it was: the next visit fails the same way.
    assert_eq!(std::fs::read_to_string(&checkpoint).unwrap(), before);
    serve.stop();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_server_is_caught_by_comparing_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let fast = [("IDLEDGER_STH_INTERVAL_MS", "10")];
    let mut a = Serve::start_with(&a_dir, None, &fast).await;
    add_domains(&a, &["one.example.com", "two.example.com"]).await;
    let shared = head_of(&a).await;
    head_covering(&a.http, &a.url, &a.token, shared).await;
    let key = public_key_of(&a_dir);
    let file = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let accepted = |serve: &Serve, cp: &str| {
        let (r, code) = visit(serve, cp, &key);
        assert_eq!(code, 0, "{r}");
        r["tree_size"].as_u64().unwrap()
    };
    let early = file("early.checkpoint");
    accepted(&a, &early);
    a.stop();
    // The same history, then two: each server shows its auditor a consistent log.
    copy_dir(&a_dir, &b_dir);
    let a = Serve::start_with(&a_dir, None, &fast).await;
    let b = Serve::start_with(&b_dir, None, &fast).await;
    add_domains(&a, &["three-a.example.com"]).await;
    add_domains(&b, &["three-b.example.com", "four-b.example.com"]).await;
    head_covering(&a.http, &a.url, &a.token, shared + PER_DOMAIN).await;
    head_covering(&b.http, &b.url, &b.token, shared + 2 * PER_DOMAIN).await;
    let (ca, cb) = (file("a.checkpoint"), file("b.checkpoint"));
    assert_eq!(accepted(&a, &ca), shared + PER_DOMAIN);
    assert_eq!(accepted(&b, &cb), shared + 2 * PER_DOMAIN);
    let compare = |x: &str, y: &str, server: Option<&Serve>| {
        let mut args = vec!["checkpoint", "compare", x, y, "--public-key", &key];
        if let Some(s) = server {
            args.extend(["--server", &s.url]);
        }
        auditor_cli(&a.token, &args)
    };
    // Each agrees with the early checkpoint; they disagree with each other, whichever
    // server is asked for the proof.
    let (r, code) = compare(&early, &ca, Some(&a));
    assert_eq!(code, 0, "{r}");
    let (r, code) = compare(&early, &cb, Some(&b));
    assert_eq!(code, 0, "{r}");
    for server in [&a, &b] {
        let (r, code) = compare(&ca, &cb, Some(server));
        assert_eq!(code, 1, "{r}");
        assert_eq!(r["ok"], false);
    }
    // Same size, different roots: caught without asking anyone.
    add_domains(&a, &["four-a.example.com"]).await;
    head_covering(&a.http, &a.url, &a.token, shared + 2 * PER_DOMAIN).await;
    assert_eq!(accepted(&a, &ca), shared + 2 * PER_DOMAIN);
    let (r, code) = compare(&ca, &cb, None);
    assert_eq!(code, 1, "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("two different roots"),
        "{r}"
    );
    // A checkpoint changed after it was signed is a finding (exit 1), not a check that
    // could not run: in a comparison, and as the head an auditor accepted before.
    let text = std::fs::read_to_string(&ca).unwrap();
    let size_line = text.lines().nth(1).unwrap().to_owned();
    let forged = file("forged.checkpoint");
    std::fs::write(&forged, text.replacen(&size_line, "1", 1)).unwrap();
    let (r, code) = compare(&forged, &cb, None);
    assert_eq!(code, 1, "{r}");
    assert!(
        r["reason"].as_str().unwrap().contains("checkpoint A"),
        "{r}"
    );
    assert_eq!((&r["a_tree_size"], &r["ok"]), (&Value::Null, &json!(false)));
    let (r, code) = visit(&a, &forged, &key);
    assert_eq!(code, 1, "{r}");
    assert!(
        r["reason"].as_str().unwrap().contains("forged.checkpoint"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_signed_before_a_sigkill_hold_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fast = [("IDLEDGER_STH_INTERVAL_MS", "10")];
    let mut seen: Vec<String> = Vec::new();
    let mut key = None;
    for round in 0..3 {
        let mut serve = Serve::start_with(&data, None, &fast).await;
        let vkey = key.get_or_insert_with(|| public_key_of(&data)).clone();
        // Writers append while an auditor keeps every head it is shown.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..4 {
            let (http, url, token, stop) = (
                serve.http.clone(),
                serve.url.clone(),
                serve.token.clone(),
                stop.clone(),
            );
            writers.push(tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = http
                        .post(format!("{url}/v1/domains"))
                        .bearer_auth(&token)
                        .json(&json!({"domain": format!("r{round}w{w}n{n}.example.com")}))
                        .send()
                        .await;
                    n += 1;
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_millis(800 + 300 * round);
        while Instant::now() < deadline {
            if let (StatusCode::OK, note) = get_text(
                &serve.http,
                &format!("{}/v1/log/sth", serve.url),
                &serve.token,
            )
            .await
            {
                if seen.last() != Some(&note) {
                    seen.push(note);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        serve.child.kill().unwrap(); // SIGKILL, writers mid-request
        serve.child.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }

        let serve = Serve::start_with(&data, None, &fast).await;
        let head = head_of(&serve).await;
        let latest = head_covering(&serve.http, &serve.url, &serve.token, head).await;
        let leaves = leaves_of(&serve.http, &serve.url, &serve.token).await;
        let (_, size, root) = open_checkpoint(&latest, &vkey);
        assert_eq!(size as usize, leaves.len(), "round {round}");
        assert_eq!(
            root,
            rfc9162::mth(&leaves),
            "round {round}: the root is the records' MTH"
        );
        assert!(
            seen.len() > 3,
            "round {round}: too few heads seen ({})",
            seen.len()
        );
        for note in &seen {
            let (_, old, old_root) = open_checkpoint(note, &vkey);
            assert!(old <= size, "a head was signed for records that were lost");
            assert_eq!(
                old_root,
                rfc9162::mth(&leaves[..old as usize]),
                "round {round}: head {old}"
            );
            let p = serve
                .call(
                    Method::GET,
                    &format!("/v1/log/proof/consistency?from={old}&to={size}"),
                    None,
                )
                .await;
            assert!(rfc9162::verify_consistency(
                old,
                size,
                &old_root,
                &root,
                &hashes(&p)
            ));
        }
        drop(serve);
    }
    let (report, code) = verify(&data);
    assert_eq!(code, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_proves_where_it_sits_in_the_signed_history() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fast = [("IDLEDGER_STH_INTERVAL_MS", "10")];
    let mut serve = Serve::start_with(&data, None, &fast).await;
    add_domains(&serve, &["x.example.com", "y.example.com"]).await;
    let key = public_key_of(&data);
    let out = dir.path().join("events.jsonl");
    let o = out.to_str().unwrap();
    let (written, code) = auditor_cli(
        &serve.token,
        &[
            "export", "--server", &serve.url, "--kind", "events", "--format", "jsonl", "--out", o,
        ],
    );
    assert_eq!(code, 0, "{written}");
    assert!(
        written["signed_tree_size"].as_u64().unwrap() >= written["log_position"].as_u64().unwrap()
    );
    // The export checked against the log, with the auditor's key and without.
    let with_key_of = |file: &str| {
        auditor_cli(
            &serve.token,
            &[
                "verify-export",
                file,
                "--server",
                &serve.url,
                "--public-key",
                &key,
            ],
        )
    };
    let with_key = || with_key_of(o);
    let without_key = || auditor_cli(&serve.token, &["verify-export", o, "--server", &serve.url]);
    let (checked, code) = with_key();
    assert_eq!(code, 0, "{checked}");
    assert_eq!(
        (&checked["signed_head"], &checked["head_key"]),
        (&json!("verified"), &json!("auditor"))
    );
    // Uploaded, the server holds the head to its own key: it proves the head is this
    // log's, and says whose key that was.
    let upload = |manifest: &Value| {
        let mut body = serde_json::to_vec(manifest).unwrap();
        body.push(b'\n');
        body.extend_from_slice(&std::fs::read(&out).unwrap());
        let req = reqwest::Client::new()
            .post(format!("{}/v1/audit/verify-export", serve.url))
            .bearer_auth(&serve.token)
            .body(body);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), reqwest::StatusCode::OK);
            r.json::<Value>().await.unwrap()
        }
    };
    let manifest = dir.path().join("events.jsonl.manifest.json");
    let original = std::fs::read_to_string(&manifest).unwrap();
    let as_written: Value = serde_json::from_str(&original).unwrap();
    let report = upload(&as_written).await;
    assert_eq!(
        (&report["ok"], &report["signed_head"], &report["head_key"]),
        (&json!(true), &json!("verified"), &json!("log")),
        "{report}"
    );
    let mut garbled = as_written.clone();
    garbled["signed_head"]["checkpoint"] = json!("garbage\n");
    let report = upload(&garbled).await;
    assert_eq!(
        (&report["ok"], &report["signed_head"]),
        (&json!(false), &json!("failed")),
        "{report}"
    );
    // Without the auditor's key the head is not checked, and the report says so.
    let (unchecked, code) = without_key();
    assert_eq!(code, 0, "{unchecked}");
    assert_eq!(
        (&unchecked["signed_head"], &unchecked["head_key"]),
        (&json!("unchecked"), &json!("none"))
    );
    // A head whose root is not the records' is refused.
    let mut m: Value = serde_json::from_str(&original).unwrap();
    let note = m["signed_head"]["checkpoint"].as_str().unwrap().to_owned();
    let root = note.lines().nth(2).unwrap().to_owned();
    let other = B64.encode([9u8; 32]);
    m["signed_head"]["checkpoint"] = json!(note.replace(&root, &other));
    std::fs::write(&manifest, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    let (refused, code) = with_key();
    assert_eq!(code, 1, "{refused}");
    assert_eq!(refused["signed_head"], "failed");
    // A manifest whose head was dropped (whoever rewrote the log would drop it) fails
    // against the auditor's key; without a key it is only reported absent.
    let mut m: Value = serde_json::from_str(&original).unwrap();
    m.as_object_mut().unwrap().remove("signed_head");
    std::fs::write(&manifest, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    let (refused, code) = with_key();
    assert_eq!(code, 1, "{refused}");
    assert_eq!(refused["signed_head"], "failed");
    let (absent, code) = without_key();
    assert_eq!(code, 0, "{absent}");
    assert_eq!(absent["signed_head"], "absent");
    std::fs::write(&manifest, &original).unwrap();
    // A range before the first record: no rows, nothing read, nothing to prove; it
    // verifies against the auditor's key as well.
    let empty = dir.path().join("empty.jsonl");
    let e = empty.to_str().unwrap();
    let (written, code) = auditor_cli(
        &serve.token,
        &[
            "export",
            "--server",
            &serve.url,
            "--kind",
            "events",
            "--format",
            "jsonl",
            "--to",
            "2000-01-01T00:00:00Z",
            "--out",
            e,
        ],
    );
    assert_eq!(
        (code, &written["log_position"]),
        (0, &json!(0)),
        "{written}"
    );
    let (checked, code) = with_key_of(e);
    assert_eq!(code, 0, "{checked}");
    // The same empty file claiming the whole log (no `to`) is no export of it.
    let empty_manifest = dir.path().join("empty.jsonl.manifest.json");
    let mut m: Value =
        serde_json::from_str(&std::fs::read_to_string(&empty_manifest).unwrap()).unwrap();
    m["range"]["to"] = Value::Null;
    std::fs::write(&empty_manifest, m.to_string()).unwrap();
    let (refused, code) = with_key_of(e);
    assert_eq!(code, 1, "{refused}");
    assert_eq!(refused["problems"][0]["problem"], "incomplete_range");

    // From the stopped server's data dir: the first kept head past the position, with
    // the consistency proof to it.
    add_domains(&serve, &["z.example.com"]).await;
    serve.stop();
    let (written, code) = auditor_cli(
        "",
        &[
            "export",
            "--data-dir",
            data.to_str().unwrap(),
            "--kind",
            "events",
            "--format",
            "csv",
            "--out",
            dir.path().join("e.csv").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{written}");
    assert!(written["signed_tree_size"].is_u64(), "{written}");
    let (checked, code) = auditor_cli(
        "",
        &[
            "verify-export",
            dir.path().join("e.csv").to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{checked}");
    // Checked with the key the data dir keeps: whoever rewrote the log could have
    // replaced that too, and the report says whose key it was.
    assert_eq!(
        (&checked["signed_head"], &checked["head_key"]),
        (&json!("verified"), &json!("log"))
    );
}

/// Whole backups, however often an auditor asks for one, keep no more signed heads than
/// the interval allows: each carries a head of its own, signed and not kept.
#[tokio::test]
async fn backups_asked_for_often_keep_no_extra_signed_heads() {
    let app = crate::support::spawn_app_tuned(Default::default(), |c| {
        c.sth_interval_ms = 3_600_000;
    })
    .await;
    let auditor = app.token("auditor", &[]).await;
    let kept = || async {
        let (s, b) = app
            .call(Some(&app.admin), reqwest::Method::GET, "/v1/log/sths", None)
            .await;
        assert_eq!(s, reqwest::StatusCode::OK, "{b}");
        b["items"].as_array().unwrap().len()
    };
    let before = kept().await;
    for n in 0..5 {
        app.domain(&format!("often{n}.onmicrosoft.com")).await;
        let r = app
            .http
            .get(format!("{}/v1/backup?limit=1", app.url))
            .bearer_auth(&auditor)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::OK);
        let body = r.bytes().await.unwrap();
        assert!(
            String::from_utf8_lossy(&body).contains("\u{2014} "),
            "a signed head in the backup"
        );
    }
    assert!(kept().await <= before + 1, "backups kept heads");
}

/// A server that answers every request with a body that never ends: the auditor's tools
/// stop reading at a limit and report, rather than hold it all (the server they check is
/// the one they do not trust).
#[test]
fn an_answer_without_end_is_refused_not_read_to_the_end() {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                            transfer-encoding: chunked\r\n\r\n";
                let chunk = format!("10000\r\n{}\r\n", "A".repeat(0x10000));
                let _ = conn.write_all(head.as_bytes());
                while conn.write_all(chunk.as_bytes()).is_ok() {}
            });
        }
    });
    let key = idledger_replay::tree::LogSigningKey::from_seed("idledger/x", &[7; 32])
        .unwrap()
        .public()
        .to_string();
    for args in [
        vec![
            "prove",
            "--server",
            &url,
            "--position",
            "1",
            "--public-key",
            &key,
        ],
        vec!["verify", "--server", &url],
    ] {
        let mut child = idledger()
            .env("IDLEDGER_TOKEN", "t")
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{args:?} still reading after 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let line = String::from_utf8_lossy(&out.stdout);
        let report: Value = serde_json::from_str(line.trim()).expect("one JSON line");
        assert_eq!(report["ok"], false, "{report}");
        assert!(
            report.to_string().contains("more than"),
            "{args:?}: {report}"
        );
        assert_ne!(out.status.code(), Some(0));
    }
}

/// How the proxy of [`a_record_altered_on_the_way_is_not_proved`] lies about a record.
#[derive(Clone, Copy)]
enum Lie {
    /// One byte of the record's payload changed (it still decodes).
    AlteredByte,
    /// The next record handed out as the one asked for.
    OtherPosition,
}

/// A proxy in front of `upstream` that passes every GET through, except that the records
/// of `/v1/events` are lied about as `lie` says.
async fn lying_proxy(upstream: String, lie: Lie) -> String {
    use base64::engine::general_purpose::STANDARD as B64;
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (http, upstream) = (http.clone(), upstream.clone());
        async move {
            let path = req.uri().path_and_query().unwrap().as_str().to_owned();
            let events = path.starts_with("/v1/events");
            let asked = match (events, lie) {
                (true, Lie::OtherPosition) => path.replace("limit=1", "limit=2"),
                _ => path.clone(),
            };
            let mut fwd = http.get(format!("{upstream}{asked}"));
            if let Some(a) = req.headers().get("authorization") {
                fwd = fwd.header("authorization", a);
            }
            let r = fwd.send().await.unwrap();
            let status = axum::http::StatusCode::from_u16(r.status().as_u16()).unwrap();
            let kind = r.headers()["content-type"].to_str().unwrap().to_owned();
            let mut body = r.bytes().await.unwrap().to_vec();
            if events && status.is_success() {
                let mut page: Value = serde_json::from_slice(&body).unwrap();
                let items = page["items"].as_array_mut().unwrap();
                match lie {
                    Lie::AlteredByte => {
                        let mut record = B64.decode(items[0]["record"].as_str().unwrap()).unwrap();
                        let at = record
                            .windows(12)
                            .position(|w| w == b".example.com")
                            .expect("a domain name in the record");
                        record[at - 1] ^= 0x01;
                        items[0]["record"] = json!(B64.encode(record));
                    }
                    Lie::OtherPosition => {
                        let asked = items[0]["position"].clone();
                        let next = items.remove(1);
                        items[0] = next;
                        items[0]["position"] = asked;
                    }
                }
                body = serde_json::to_vec(&page).unwrap();
            }
            (status, [("content-type", kind)], body)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// `prove` checks the record it is handed, not only the server's word: a record altered
/// on the way fails its inclusion proof, and another position's record is refused by the
/// position it carries, with a reason and a failing exit either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_altered_on_the_way_is_not_proved() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fast = [("IDLEDGER_STH_INTERVAL_MS", "10")];
    let serve = Serve::start_with(&data, None, &fast).await;
    add_domains(&serve, &["a.example.com", "b.example.com", "c.example.com"]).await;
    let head = head_of(&serve).await;
    head_covering(&serve.http, &serve.url, &serve.token, head).await;
    let key = public_key_of(&data);
    let position = (1..=head)
        .find(|p| {
            let (proved, code) = auditor_cli(
                &serve.token,
                &[
                    "prove",
                    "--server",
                    &serve.url,
                    "--position",
                    &p.to_string(),
                    "--public-key",
                    &key,
                ],
            );
            code == 0 && proved["kind"] == "DomainRegistered"
        })
        .expect("a domain's record proved through the honest server");
    for (lie, reason) in [
        (Lie::AlteredByte, "inclusion proof"),
        (Lie::OtherPosition, "position"),
    ] {
        let proxy = lying_proxy(serve.url.clone(), lie).await;
        let args: Vec<String> = [
            "prove",
            "--server",
            &proxy,
            "--position",
            &position.to_string(),
            "--public-key",
            &key,
        ]
        .map(String::from)
        .into();
        let token = serve.token.clone();
        // The proxy answers on this runtime while the command waits.
        let (report, code) = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            auditor_cli(&token, &args)
        })
        .await
        .unwrap();
        assert_ne!(code, 0, "{report}");
        assert_eq!(report["ok"], false, "{report}");
        assert!(report.to_string().contains(reason), "{reason}: {report}");
    }
}

/// The auditor's commands exactly as issue 14 spells them, with no `--public-key`: the
/// first visit trusts the server's key on first use, says so, and pins it beside the
/// checkpoint in the form `idledger log-key` prints; later visits, `prove --checkpoint`
/// and `checkpoint compare` use the pinned key; `prove` alone says it proved only against
/// the server's own key; `checkpoint compare` with no key anywhere names `--public-key`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditor_commands_work_as_the_issue_spells_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fast = [("IDLEDGER_STH_INTERVAL_MS", "10")];
    let serve = Serve::start_with(&data, None, &fast).await;
    add_domains(&serve, &["a.example.com", "b.example.com"]).await;
    let head = head_of(&serve).await;
    head_covering(&serve.http, &serve.url, &serve.token, head).await;
    let key = public_key_of(&data);
    let file = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let (cp, pin) = (file("auditor.checkpoint"), file("auditor.checkpoint.pub"));
    let visit = |cp: &str| {
        auditor_cli_said(
            &serve.token,
            &["verify", "--server", &serve.url, "--checkpoint", cp],
        )
    };

    // `idledger verify --server URL --checkpoint FILE`, the first time.
    let (first, code, said) = visit(&cp);
    assert_eq!(code, 0, "{first} {said}");
    assert_eq!(
        (&first["ok"], &first["key"]),
        (&json!(true), &json!("first_use"))
    );
    assert_eq!(first["tree_size"], head, "{first}");
    assert!(said.contains("trusted on first use"), "{said}");
    assert!(said.contains("--public-key"), "how to pin one: {said}");
    assert!(said.contains(&pin), "where it is pinned: {said}");
    assert_eq!(
        std::fs::read_to_string(&pin).unwrap(),
        format!("{key}\n"),
        "the server's key, pinned as `idledger log-key` prints it"
    );

    // The next visit holds the server to the pinned key and says nothing about trust.
    add_domains(&serve, &["c.example.com"]).await;
    head_covering(&serve.http, &serve.url, &serve.token, head + PER_DOMAIN).await;
    let (second, code, said) = visit(&cp);
    assert_eq!(code, 0, "{second} {said}");
    assert_eq!(second["key"], "pinned", "{second}");
    assert_eq!(second["previous_tree_size"], head, "{second}");
    assert!(!said.contains("first use"), "{said}");

    // `idledger prove --server URL --position P`: against the server's own key, and said.
    let (proved, code, said) = auditor_cli_said(
        &serve.token,
        &["prove", "--server", &serve.url, "--position", "2"],
    );
    assert_eq!(code, 0, "{proved} {said}");
    assert_eq!(
        (&proved["ok"], &proved["key"]),
        (&json!(true), &json!("server"))
    );
    assert!(said.contains("server's own key"), "{said}");
    // With the checkpoint, against the key pinned beside it.
    let (proved, code, said) = auditor_cli_said(
        &serve.token,
        &[
            "prove",
            "--server",
            &serve.url,
            "--position",
            "2",
            "--checkpoint",
            &cp,
        ],
    );
    assert_eq!(code, 0, "{proved} {said}");
    assert_eq!(proved["key"], "pinned", "{proved}");
    assert!(!said.contains("server's own key"), "{said}");

    // `idledger checkpoint compare A B`: another auditor's file of the same head, and
    // one of a later head (the consistency proof from --server).
    let other = file("other.checkpoint");
    let (r, code, said) = visit(&other);
    assert_eq!(code, 0, "{r} {said}");
    assert_eq!(
        r["tree_size"], second["tree_size"],
        "no appends between: {r}"
    );
    let (same, code) = auditor_cli(&serve.token, &["checkpoint", "compare", &cp, &other]);
    assert_eq!(code, 0, "{same}");
    assert_eq!(
        (&same["ok"], &same["key"]),
        (&json!(true), &json!("pinned"))
    );
    add_domains(&serve, &["d.example.com"]).await;
    let later = second["tree_size"].as_u64().unwrap() + PER_DOMAIN;
    head_covering(&serve.http, &serve.url, &serve.token, later).await;
    let (r, code) = {
        let (r, code, _) = visit(&other);
        (r, code)
    };
    assert_eq!((code, &r["tree_size"]), (0, &json!(later)), "{r}");
    let (grown, code) = auditor_cli(
        &serve.token,
        &["checkpoint", "compare", &cp, &other, "--server", &serve.url],
    );
    assert_eq!(code, 0, "{grown}");
    assert_eq!(grown["ok"], true, "{grown}");
    // A pin beside one of the two is enough: the other must verify with it.
    let bare = file("bare.checkpoint");
    std::fs::copy(&other, &bare).unwrap();
    let (one, code) = auditor_cli(
        &serve.token,
        &["checkpoint", "compare", &cp, &bare, "--server", &serve.url],
    );
    assert_eq!((code, &one["key"]), (0, &json!("pinned")), "{one}");
    // No key given and none pinned: refused, naming the option that gives one.
    let bare_too = file("bare-too.checkpoint");
    std::fs::copy(&cp, &bare_too).unwrap();
    let (refused, code) = auditor_cli(&serve.token, &["checkpoint", "compare", &bare, &bare_too]);
    assert_eq!(code, 2, "{refused}");
    assert_eq!(refused["checked"], false, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("--public-key"),
        "{refused}"
    );
}

/// A pinned key is what the server is held to: a server showing another key (another
/// log's, behind the same checkpoint) fails the visit clearly and changes neither the
/// checkpoint nor its pin; `prove --checkpoint` fails the same way; a key given that
/// disagrees with the pin is refused; and two auditors' checkpoints pinned to two keys
/// do not compare as one history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_key_is_not_the_pinned_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let fast = [("IDLEDGER_STH_INTERVAL_MS", "10")];
    let a = Serve::start_with(&a_dir, None, &fast).await;
    let b = Serve::start_with(&b_dir, None, &fast).await;
    for s in [&a, &b] {
        add_domains(s, &["one.example.com"]).await;
        let head = head_of(s).await;
        head_covering(&s.http, &s.url, &s.token, head).await;
    }
    let (a_key, b_key) = (public_key_of(&a_dir), public_key_of(&b_dir));
    assert_ne!(a_key, b_key);
    let file = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let (cp, pin) = (file("auditor.checkpoint"), file("auditor.checkpoint.pub"));
    let (first, code) = auditor_cli(
        &a.token,
        &["verify", "--server", &a.url, "--checkpoint", &cp],
    );
    assert_eq!((code, &first["key"]), (0, &json!("first_use")), "{first}");
    let (kept, kept_pin) = (
        std::fs::read_to_string(&cp).unwrap(),
        std::fs::read_to_string(&pin).unwrap(),
    );
    assert_eq!(kept_pin.trim(), a_key);

    // The same checkpoint, a server with another key.
    let (swapped, code, said) = auditor_cli_said(
        &b.token,
        &["verify", "--server", &b.url, "--checkpoint", &cp],
    );
    assert_eq!(code, 1, "{swapped} {said}");
    assert_eq!(
        (&swapped["ok"], &swapped["key"]),
        (&json!(false), &json!("pinned"))
    );
    let reason = swapped["reason"].as_str().unwrap();
    assert!(reason.contains("is not the key pinned in"), "{reason}");
    assert!(
        reason.contains(&b_key) && reason.contains(&a_key),
        "{reason}"
    );
    assert!(!said.contains("first use"), "{said}");
    assert_eq!(std::fs::read_to_string(&cp).unwrap(), kept);
    assert_eq!(std::fs::read_to_string(&pin).unwrap(), kept_pin);
    let (proved, code) = auditor_cli(
        &b.token,
        &[
            "prove",
            "--server",
            &b.url,
            "--position",
            "1",
            "--checkpoint",
            &cp,
        ],
    );
    assert_eq!(code, 1, "{proved}");
    assert!(
        proved["reason"]
            .as_str()
            .unwrap()
            .contains("is not the key pinned in"),
        "{proved}"
    );
    // The other log's key given outright does not override the pin.
    let (refused, code) = auditor_cli(
        &b.token,
        &[
            "verify",
            "--server",
            &b.url,
            "--checkpoint",
            &cp,
            "--public-key",
            &b_key,
        ],
    );
    assert_eq!(code, 2, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("is not the key pinned in"),
        "{refused}"
    );
    assert_eq!(std::fs::read_to_string(&pin).unwrap(), kept_pin);
    // The original server still holds against its pinned key.
    let (again, code) = auditor_cli(
        &a.token,
        &["verify", "--server", &a.url, "--checkpoint", &cp],
    );
    assert_eq!((code, &again["key"]), (0, &json!("pinned")), "{again}");

    // Another auditor who first met the other server pinned the other key.
    let theirs = file("theirs.checkpoint");
    let (r, code) = auditor_cli(
        &b.token,
        &["verify", "--server", &b.url, "--checkpoint", &theirs],
    );
    assert_eq!(code, 0, "{r}");
    let (compared, code) = auditor_cli(&a.token, &["checkpoint", "compare", &cp, &theirs]);
    assert_eq!(code, 1, "{compared}");
    assert!(
        compared["reason"].as_str().unwrap().contains("differ"),
        "{compared}"
    );
}

/// The log's signing key is sealed at rest: its seed (unsealed here with the master key,
/// the way the server does, and checked to be the key's by the public key it gives)
/// appears in no file of the data dir, raw, in hex, in base64 (the form the sealed
/// secret holds) or in the `PRIVATE+KEY` note form, while the public key is found in the
/// key file by the same search (so the search can find what it looks for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_signing_keys_seed_is_not_stored_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fast = [("IDLEDGER_STH_INTERVAL_MS", "10")];
    let mut serve = Serve::start_with(&data, None, &fast).await;
    add_domains(&serve, &["sealed.example.com"]).await;
    let head = head_of(&serve).await;
    head_covering(&serve.http, &serve.url, &serve.token, head).await;
    serve.stop();
    let published = public_key_of(&data);

    // The seed, unsealed from the key file with the data dir's master key.
    let key_file = idledger::notary::key::key_path(&data);
    let text = std::fs::read_to_string(&key_file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "header, public key, sealed seed: {text}");
    assert_eq!(lines[1], published);
    let sealed: idledger_domain::SealedSecret =
        idledger_domain::codec::decode_exact(&B64.decode(lines[2]).unwrap()).unwrap();
    let (master, _) = idledger::secrets::MasterKey::load(&data, None, true).unwrap();
    let keys = idledger::secrets::keystore::KeyFile::open(&data).unwrap();
    let keyring = idledger::secrets::Keyring::open(master, std::sync::Arc::new(keys)).unwrap();
    let subject = idledger_domain::StreamId::new("log-signing-key").unwrap();
    let seed: [u8; 32] = B64
        .decode(keyring.unseal(&subject, &sealed).unwrap().expose())
        .unwrap()
        .try_into()
        .unwrap();
    let name = published.split('+').next().unwrap();
    let signing = idledger_replay::tree::LogSigningKey::from_seed(name, &seed).unwrap();
    assert_eq!(
        signing.public().to_string(),
        published,
        "the seed is the log's key's"
    );

    // Every form a 32-byte key is written in, found anywhere in `hay`.
    let forms = |key: &[u8; 32]| -> Vec<(&'static str, Vec<u8>)> {
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let bare = base64::engine::general_purpose::STANDARD_NO_PAD;
        let note = [&[1u8][..], key].concat();
        vec![
            ("raw", key.to_vec()),
            ("hex", hex::encode(key).into_bytes()),
            ("HEX", hex::encode_upper(key).into_bytes()),
            ("base64", bare.encode(key).into_bytes()),
            ("base64url", url.encode(key).into_bytes()),
            ("base64 of 0x01 ‖ key", bare.encode(&note).into_bytes()),
        ]
    };
    let found = |hay: &[u8], key: &[u8; 32]| {
        forms(key)
            .into_iter()
            .find(|(_, form)| hay.windows(form.len()).any(|w| w == form.as_slice()))
            .map(|(name, _)| name)
    };
    let public = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    assert_eq!(
        found(text.as_bytes(), &public),
        Some("base64 of 0x01 ‖ key"),
        "the search finds the public key where it is written"
    );
    let mut files = vec![data.clone()];
    let mut scanned = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            found(&bytes, &seed),
            None,
            "the log key's seed is in {} in the clear",
            path.display()
        );
        scanned += 1;
    }
    assert!(scanned > 3, "{scanned} files scanned");
}
