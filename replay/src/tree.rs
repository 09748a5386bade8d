//! Provable history, the side anyone can check: the Merkle tree over the log's stored
//! records with RFC 9162's hashing (a leaf is SHA-256(0x00 ‖ record), a node
//! SHA-256(0x01 ‖ left ‖ right)), the root of a tree built record by record, the checks of
//! inclusion and consistency proofs, and signed tree heads as C2SP checkpoints (signed
//! notes with an Ed25519 key). Pure: signing is given the key, checking the public key.
//!
//! The proof algorithms are `tlog_tiles`' (a port of Go's `sumdb/tlog`, compatible with
//! RFC 6962/9162); notes are `signed_note`'s. What is ours: the checkpoint's body (with a
//! `Timestamp:` extension line in **milliseconds** since the Unix epoch: the line is
//! named as Rekor's, whose value is nanoseconds, so a tool that reads Rekor's line must
//! not read ours as one) and the key's file form.

use base64::Engine;
use idledger_domain::Hash;
use std::fmt;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The root of the empty tree: SHA-256 of nothing.
pub const EMPTY_ROOT: Hash = Hash(tlog_tiles::EMPTY_HASH.0);

fn ours(h: tlog_tiles::Hash) -> Hash {
    Hash(h.0)
}

fn theirs(h: &Hash) -> tlog_tiles::Hash {
    tlog_tiles::Hash(h.0)
}

/// The leaf hash of a stored record (its bytes exactly as the log stores them).
pub fn leaf_hash(record: &[u8]) -> Hash {
    ours(tlog_tiles::record_hash(record))
}

/// The hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    ours(tlog_tiles::node_hash(theirs(left), theirs(right)))
}

/// The root of a tree built leaf by leaf in O(log n) memory: the roots of the complete
/// subtrees along the right edge (the compact range), largest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    edge: Vec<Hash>,
}

impl Frontier {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next leaf.
    pub fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut size = self.size;
        // Each trailing one bit of the old size is a complete subtree this leaf completes.
        while size & 1 == 1 {
            let left = self.edge.pop().unwrap_or_default();
            hash = node_hash(&left, &hash);
            size >>= 1;
        }
        self.edge.push(hash);
        self.size += 1;
    }

    /// Adds a complete subtree of `leaves` leaves whose root is `root`, as pushing its
    /// leaves one by one would: readers that hash aligned ranges of a log in parallel
    /// hand over one root a range. `leaves` must be a power of two dividing the size so
    /// far (the subtree sits where RFC 9162's tree has it); anything else is refused.
    pub fn push_subtree(&mut self, root: Hash, leaves: u64) -> Result<(), MisplacedSubtree> {
        if !leaves.is_power_of_two() || !self.size.is_multiple_of(leaves) {
            return Err(MisplacedSubtree {
                size: self.size,
                leaves,
            });
        }
        let mut hash = root;
        let mut size = self.size / leaves;
        while size & 1 == 1 {
            let left = self.edge.pop().unwrap_or_default();
            hash = node_hash(&left, &hash);
            size >>= 1;
        }
        self.edge.push(hash);
        self.size += leaves;
        Ok(())
    }

    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The tree's root (RFC 9162's MTH of the leaves so far).
    pub fn root(&self) -> Hash {
        let mut right = match self.edge.last() {
            None => return EMPTY_ROOT,
            Some(h) => *h,
        };
        for left in self.edge.iter().rev().skip(1) {
            right = node_hash(left, &right);
        }
        right
    }
}

/// A subtree that is not a complete one at the right edge of the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a subtree of {leaves} leaves cannot follow {size} leaves")]
pub struct MisplacedSubtree {
    size: u64,
    leaves: u64,
}

/// A proof that does not hold, or a question a proof cannot answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The hashes do not lead from the leaf (or the old root) to the root.
    #[error("the proof does not hold")]
    Invalid,
    /// Sizes or positions out of range.
    #[error("{0}")]
    OutOfRange(String),
    /// The hashes a proof is made of could not be read (the prover's failure, not the
    /// asker's).
    #[error("the tree could not be read: {0}")]
    Unreadable(String),
}

/// No proof of a tree of up to 2^64 leaves needs more hashes: a longer one (from a
/// hostile server) is refused before any work, as the checks copy it at every level.
const MAX_PROOF_HASHES: usize = 130;

fn bounded(proof: &[Hash]) -> Result<(), ProofError> {
    if proof.len() > MAX_PROOF_HASHES {
        return Err(ProofError::Invalid);
    }
    Ok(())
}

fn tlog_error(e: tlog_tiles::Error) -> ProofError {
    match e {
        tlog_tiles::Error::InvalidProof => ProofError::Invalid,
        other => ProofError::OutOfRange(other.to_string()),
    }
}

/// Checks that `proof` (the audit path, leaf to root) shows `leaf` at `leaf_index` in the
/// tree of `tree_size` leaves whose root is `root`.
pub fn check_inclusion(
    proof: &[Hash],
    tree_size: u64,
    root: &Hash,
    leaf_index: u64,
    leaf: &Hash,
) -> Result<(), ProofError> {
    if leaf_index >= tree_size {
        return Err(ProofError::OutOfRange(format!(
            "leaf {leaf_index} is not in a tree of {tree_size}"
        )));
    }
    bounded(proof)?;
    let proof: Vec<_> = proof.iter().map(theirs).collect();
    tlog_tiles::check_record(&proof, tree_size, theirs(root), leaf_index, theirs(leaf))
        .map_err(tlog_error)
}

/// Checks that `proof` shows the tree of `old_size` leaves with root `old_root` to be a
/// prefix of the tree of `new_size` leaves with root `new_root`: nothing was rewritten.
pub fn check_consistency(
    proof: &[Hash],
    old_size: u64,
    old_root: &Hash,
    new_size: u64,
    new_root: &Hash,
) -> Result<(), ProofError> {
    if old_size == 0 || old_size > new_size {
        return Err(ProofError::OutOfRange(format!(
            "no consistency proof from {old_size} to {new_size}"
        )));
    }
    bounded(proof)?;
    let proof: Vec<_> = proof.iter().map(theirs).collect();
    tlog_tiles::check_tree(
        &proof,
        new_size,
        theirs(new_root),
        old_size,
        theirs(old_root),
    )
    .map_err(tlog_error)
}

/// What a signed tree head says: the tree's size and root, and when it was signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeHead {
    /// Leaves (records) in the tree.
    pub tree_size: u64,
    /// The tree's root.
    pub root_hash: Hash,
    /// When it was signed, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// A signed tree head that cannot be read or does not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not a checkpoint note, or a malformed key.
    #[error("malformed: {0}")]
    Malformed(String),
    /// No signature of the expected key, or a signature that does not verify.
    #[error("the signature does not verify with key {0}")]
    Signature(String),
}

/// The log's public key, as C2SP verifier key text: `name+keyid+base64(0x01 ‖ key)`.
#[derive(Clone, PartialEq, Eq)]
pub struct LogPublicKey {
    text: String,
    name: String,
    key_id: u32,
}

impl fmt::Display for LogPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for LogPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogPublicKey({})", self.text)
    }
}

impl LogPublicKey {
    /// Parses verifier key text.
    pub fn parse(text: &str) -> Result<Self, HeadError> {
        let text = text.trim();
        let verifier = signed_note::StandardVerifier::new(text)
            .map_err(|e| HeadError::Malformed(format!("public key: {e}")))?;
        use signed_note::Verifier as _;
        Ok(LogPublicKey {
            text: text.to_owned(),
            name: verifier.name().to_owned(),
            key_id: verifier.key_id(),
        })
    }

    /// The key's name: the log's origin line.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The C2SP key id (a hash of the name and key) the signature lines carry.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Checks a checkpoint note and reads its head.
    pub fn open(&self, note: &str) -> Result<SignedTreeHead, HeadError> {
        let parsed = signed_note::Note::from_bytes(note.as_bytes())
            .map_err(|e| HeadError::Malformed(format!("note: {e}")))?;
        let verifier = signed_note::StandardVerifier::new(&self.text)
            .map_err(|e| HeadError::Malformed(format!("public key: {e}")))?;
        let known = signed_note::VerifierList::new(vec![Box::new(verifier)]);
        let (verified, _) = parsed
            .verify(&known)
            .map_err(|_| HeadError::Signature(self.text.clone()))?;
        let signature = verified
            .first()
            .ok_or_else(|| HeadError::Signature(self.text.clone()))?;
        let sig: [u8; 64] = signature
            .signature()
            .try_into()
            .map_err(|_| HeadError::Malformed("an Ed25519 signature is 64 bytes".into()))?;
        let text = std::str::from_utf8(parsed.text())
            .map_err(|_| HeadError::Malformed("not UTF-8".into()))?;
        let (origin, head) = parse_body(text)?;
        if origin != self.name {
            return Err(HeadError::Malformed(format!(
                "origin {origin:?} is not the key's name {:?}",
                self.name
            )));
        }
        Ok(SignedTreeHead {
            origin,
            head,
            key_id: self.key_id,
            signature: sig,
        })
    }
}

/// The checkpoint body of `head` for the log `origin`.
fn body(origin: &str, head: &TreeHead) -> String {
    format!(
        "{origin}\n{}\n{}\nTimestamp: {}\n",
        head.tree_size,
        B64.encode(head.root_hash.0),
        head.timestamp_ms
    )
}

/// Reads a checkpoint body: origin, size (decimal, no leading zero), base64 root, and our
/// `Timestamp:` line, exactly as this log writes them. Anything else (another extension
/// line, `Timestamp: 05`) is refused, even signed: an auditor keeps what it verified as
/// `to_note` writes it, and a note that does not read back the same could not be checked
/// again.
fn parse_body(text: &str) -> Result<(String, TreeHead), HeadError> {
    let bad = |what: &str| HeadError::Malformed(format!("checkpoint: {what}"));
    let mut lines = text.lines();
    let origin = lines
        .next()
        .filter(|o| !o.is_empty())
        .ok_or_else(|| bad("no origin"))?;
    let size_text = lines.next().ok_or_else(|| bad("no tree size"))?;
    let tree_size: u64 = size_text.parse().map_err(|_| bad("tree size"))?;
    if tree_size.to_string() != size_text {
        return Err(bad("tree size"));
    }
    let root = B64
        .decode(lines.next().ok_or_else(|| bad("no root hash"))?)
        .map_err(|_| bad("root hash"))?;
    let root_hash = Hash(
        root.try_into()
            .map_err(|_| bad("a root hash is 32 bytes"))?,
    );
    let timestamp_ms = lines
        .filter_map(|l| l.strip_prefix("Timestamp: "))
        .next()
        .ok_or_else(|| bad("no Timestamp line"))?
        .parse()
        .map_err(|_| bad("timestamp"))?;
    let head = TreeHead {
        tree_size,
        root_hash,
        timestamp_ms,
    };
    if body(origin, &head) != text {
        return Err(bad(
            "not in this log's form (origin, size, root, Timestamp)",
        ));
    }
    Ok((origin.to_owned(), head))
}

/// A tree head with its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedTreeHead {
    /// The log's origin line (its key's name).
    pub origin: String,
    /// What is signed.
    pub head: TreeHead,
    /// The C2SP key id of the signing key.
    pub key_id: u32,
    /// The Ed25519 signature of the checkpoint body.
    pub signature: [u8; 64],
}

impl SignedTreeHead {
    /// The checkpoint as a C2SP signed note: body, blank line, signature line.
    pub fn to_note(&self) -> String {
        let mut sig = Vec::with_capacity(68);
        sig.extend_from_slice(&self.key_id.to_be_bytes());
        sig.extend_from_slice(&self.signature);
        format!(
            "{}\n\u{2014} {} {}\n",
            body(&self.origin, &self.head),
            self.origin,
            B64.encode(sig)
        )
    }

    /// The signature line's payload (key id ‖ signature), base64, as the note carries it.
    pub fn signature_base64(&self) -> String {
        let mut sig = Vec::with_capacity(68);
        sig.extend_from_slice(&self.key_id.to_be_bytes());
        sig.extend_from_slice(&self.signature);
        B64.encode(sig)
    }
}

/// The log's Ed25519 signing key with its name (the origin line of its checkpoints).
pub struct LogSigningKey {
    origin: String,
    signer: signed_note::StandardSigner,
    public: LogPublicKey,
}

impl fmt::Debug for LogSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogSigningKey({})", self.public)
    }
}

impl LogSigningKey {
    /// The key of `seed` (32 secret bytes) named `origin` (no spaces, no `+`).
    pub fn from_seed(origin: &str, seed: &[u8; 32]) -> Result<Self, HeadError> {
        let signing = ed25519_dalek::SigningKey::from_bytes(seed);
        let vkey = signed_note::new_ed25519_verifier_key(origin, &signing.verifying_key());
        let public = LogPublicKey::parse(&vkey)?;
        let mut private = vec![1u8];
        private.extend_from_slice(seed);
        let skey = format!(
            "PRIVATE+KEY+{origin}+{:08x}+{}",
            public.key_id,
            B64.encode(&private)
        );
        let signer = signed_note::StandardSigner::new(&skey)
            .map_err(|e| HeadError::Malformed(format!("signing key: {e}")))?;
        Ok(LogSigningKey {
            origin: origin.to_owned(),
            signer,
            public,
        })
    }

    /// The public key to check its heads with.
    pub fn public(&self) -> &LogPublicKey {
        &self.public
    }

    /// Signs `head`.
    pub fn sign(&self, head: TreeHead) -> Result<SignedTreeHead, HeadError> {
        use signed_note::Signer as _;
        let text = body(&self.origin, &head);
        let signature = self
            .signer
            .sign(text.as_bytes())
            .map_err(|e| HeadError::Signature(e.to_string()))?;
        Ok(SignedTreeHead {
            origin: self.origin.clone(),
            head,
            key_id: self.public.key_id,
            signature: signature
                .try_into()
                .map_err(|_| HeadError::Malformed("an Ed25519 signature is 64 bytes".into()))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(h: &Hash) -> String {
        h.to_hex()
    }

    /// RFC 6962's test leaves, as Certificate Transparency's test suites use them.
    fn ct_leaves() -> Vec<Vec<u8>> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|h| hex::decode(h).unwrap())
        .collect()
    }

    #[test]
    fn the_roots_of_the_certificate_transparency_test_leaves() {
        // Known answers for the first 1 to 8 leaves.
        let expected = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let mut f = Frontier::new();
        assert_eq!(
            hex(&f.root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        for (leaf, root) in ct_leaves().iter().zip(expected) {
            f.push(leaf_hash(leaf));
            assert_eq!(hex(&f.root()), root, "size {}", f.size());
        }
    }

    /// Certificate Transparency's published proofs over the leaves of [`ct_leaves`], as
    /// transparency-dev/merkle gives them (`proof/verify_test.go`: `inclusionProofs`,
    /// whose leaf numbers count from 1, and `consistencyProofs`): the checks accept each,
    /// and refuse it with any one bit of it changed, or for a neighbouring leaf or size.
    #[test]
    fn the_published_certificate_transparency_proofs_hold() {
        let h = |x: &str| Hash(hex::decode(x).unwrap().try_into().unwrap());
        let (n96, n5f, n6b) = (
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        );
        let (nbc, nca, nd3) = (
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        );
        let (nfa, n6e, n0e, nb0) = (
            h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
        );
        let leaves: Vec<Hash> = ct_leaves().iter().map(|l| leaf_hash(l)).collect();
        let root = |size: u64| {
            let mut f = Frontier::new();
            leaves[..size as usize].iter().for_each(|l| f.push(*l));
            f.root()
        };
        let flipped = |proof: &[Hash], at: usize| {
            let mut p = proof.to_vec();
            p[at].0[at % 32] ^= 0x08;
            p
        };
        let inclusion: [(u64, u64, Vec<Hash>); 5] = [
            (0, 1, vec![]),
            (0, 8, vec![n96, n5f, n6b]),
            (5, 8, vec![nbc, nca, nd3]),
            (2, 3, vec![nfa]),
            (1, 5, vec![n6e, n5f, nbc]),
        ];
        for (index, size, proof) in &inclusion {
            let (index, size) = (*index, *size);
            let leaf = &leaves[index as usize];
            assert_eq!(
                check_inclusion(proof, size, &root(size), index, leaf),
                Ok(()),
                "PATH({index}, {size})"
            );
            for at in 0..proof.len() {
                let bent = flipped(proof, at);
                assert!(check_inclusion(&bent, size, &root(size), index, leaf).is_err());
            }
            if size > 1 {
                let other = (index + 1) % size;
                assert!(check_inclusion(proof, size, &root(size), other, leaf).is_err());
            }
        }
        let consistency: [(u64, u64, Vec<Hash>); 5] = [
            (1, 1, vec![]),
            (1, 8, vec![n96, n5f, n6b]),
            (6, 8, vec![n0e, nca, nd3]),
            (2, 5, vec![n5f, nbc]),
            (6, 7, vec![n0e, nb0, nd3]),
        ];
        for (old, new, proof) in &consistency {
            let (old, new) = (*old, *new);
            assert_eq!(
                check_consistency(proof, old, &root(old), new, &root(new)),
                Ok(()),
                "PROOF({old}, {new})"
            );
            for at in 0..proof.len() {
                let bent = flipped(proof, at);
                assert!(check_consistency(&bent, old, &root(old), new, &root(new)).is_err());
            }
            if old < new {
                assert!(
                    check_consistency(proof, old + 1, &root(old + 1), new, &root(new)).is_err()
                );
            }
        }
    }

    #[test]
    fn subtrees_pushed_whole_give_the_tree_of_their_leaves() {
        let leaf = |i: u64| leaf_hash(&i.to_be_bytes());
        for (width, ranges, tail) in [(1u64, 5u64, 0u64), (4, 3, 3), (8, 6, 5), (16, 1, 0)] {
            let mut whole = Frontier::new();
            let mut by_leaf = Frontier::new();
            for r in 0..ranges {
                let mut sub = Frontier::new();
                for i in r * width..(r + 1) * width {
                    sub.push(leaf(i));
                    by_leaf.push(leaf(i));
                }
                whole.push_subtree(sub.root(), width).unwrap();
                assert_eq!(whole, by_leaf, "width {width}, range {r}");
            }
            for i in ranges * width..ranges * width + tail {
                whole.push(leaf(i));
                by_leaf.push(leaf(i));
            }
            assert_eq!(whole.root(), by_leaf.root());
        }
        let mut odd = Frontier::new();
        odd.push(leaf(0));
        assert!(odd.push_subtree(leaf(1), 2).is_err(), "not at a multiple");
        assert!(
            Frontier::new().push_subtree(leaf(1), 3).is_err(),
            "not a power of two"
        );
        assert!(Frontier::new().push_subtree(leaf(1), 0).is_err());
    }

    #[test]
    fn a_proof_longer_than_any_tree_needs_is_refused_before_any_work() {
        let long = vec![leaf_hash(b"x"); 1 << 20];
        let root = leaf_hash(b"r");
        assert!(matches!(
            check_inclusion(&long, 1 << 40, &root, 5, &root),
            Err(ProofError::Invalid)
        ));
        assert!(matches!(
            check_consistency(&long, 3, &root, 1 << 40, &root),
            Err(ProofError::Invalid)
        ));
    }

    #[test]
    fn the_go_note_example_verifies_and_a_changed_byte_does_not() {
        // The example of Go's sumdb/note documentation (a published known answer).
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\
                    \n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let parsed = signed_note::Note::from_bytes(note.as_bytes()).unwrap();
        let known = signed_note::VerifierList::new(vec![Box::new(
            signed_note::StandardVerifier::new(vkey).unwrap(),
        )]);
        assert!(parsed.verify(&known).is_ok());
        let forged = note.replace("cryptography", "cryptographY");
        let parsed = signed_note::Note::from_bytes(forged.as_bytes()).unwrap();
        assert!(parsed.verify(&known).is_err());
    }

    #[test]
    fn a_signed_head_reads_back_only_with_its_key_and_unchanged() {
        let key = LogSigningKey::from_seed("idledger.test/log", &[7; 32]).unwrap();
        let head = TreeHead {
            tree_size: 12,
            root_hash: leaf_hash(b"x"),
            timestamp_ms: 1_764_633_600_000,
        };
        let signed = key.sign(head).unwrap();
        let note = signed.to_note();
        assert!(note.starts_with("idledger.test/log\n12\n"), "{note}");
        assert_eq!(key.public().open(&note).unwrap(), signed);
        let public = LogPublicKey::parse(&key.public().to_string()).unwrap();
        assert_eq!(public.open(&note).unwrap().head, head);
        let other = LogSigningKey::from_seed("idledger.test/log", &[8; 32]).unwrap();
        assert!(matches!(
            other.public().open(&note),
            Err(HeadError::Signature(_))
        ));
        let altered = note.replacen("\n12\n", "\n13\n", 1);
        assert!(key.public().open(&altered).is_err());
    }

    /// What an auditor accepts it keeps as `to_note` writes it: a signed body in another
    /// form (which would not read back the same) is refused.
    #[test]
    fn only_a_head_in_this_logs_form_is_accepted() {
        use signed_note::Signer as _;
        let key = LogSigningKey::from_seed("idledger.test/log", &[7; 32]).unwrap();
        let root = B64.encode(leaf_hash(b"x").0);
        for text in [
            format!("idledger.test/log\n5\n{root}\nTimestamp: 05\n"),
            format!("idledger.test/log\n5\n{root}\nTimestamp: +5\n"),
            format!("idledger.test/log\n5\n{root}\nTimestamp: 5\nExtra: 1\n"),
            format!("idledger.test/log\n5\n{root}\nOther: x\nTimestamp: 5\n"),
        ] {
            let signature = key.signer.sign(text.as_bytes()).unwrap();
            let mut sig = key.public().key_id.to_be_bytes().to_vec();
            sig.extend_from_slice(&signature);
            let note = format!("{text}\n\u{2014} idledger.test/log {}\n", B64.encode(sig));
            assert!(
                matches!(key.public().open(&note), Err(HeadError::Malformed(_))),
                "{text:?}"
            );
        }
        let canonical = format!("idledger.test/log\n5\n{root}\nTimestamp: 5\n");
        let signature = key.signer.sign(canonical.as_bytes()).unwrap();
        let mut sig = key.public().key_id.to_be_bytes().to_vec();
        sig.extend_from_slice(&signature);
        let note = format!(
            "{canonical}\n\u{2014} idledger.test/log {}\n",
            B64.encode(sig)
        );
        let head = key.public().open(&note).unwrap();
        assert_eq!(head.to_note(), note, "reads back the same");
    }
}
