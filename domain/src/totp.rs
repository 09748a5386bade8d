//! Authenticator codes (TOTP, RFC 6238 over HOTP, RFC 4226): HMAC-SHA-1, 6 digits, 30 s
//! steps, accepted one step either side of now for clock drift. A step once used is
//! refused afterwards, so a code seen over a shoulder or in a log cannot be replayed —
//! the caller keeps the last used step in the user's stream.
//!
//! Pure: the caller passes the time (Unix seconds) and the seed.

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Seconds per step.
pub const STEP_SECS: i64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;
/// Steps accepted before and after the current one.
pub const SKEW: u64 = 1;
/// Seed length in bytes (160 bits, RFC 4226's recommendation for SHA-1).
pub const SEED_LEN: usize = 20;

/// The step a Unix time falls in (times before 1970 count as step 0).
pub fn step_at(unix_secs: i64) -> u64 {
    u64::try_from(unix_secs.max(0) / STEP_SECS).unwrap_or(0)
}

/// The HOTP code of `seed` at counter `step`.
pub fn code(seed: &[u8], step: u64) -> u32 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = <Hmac<Sha1> as Mac>::new_from_slice(seed) else {
        return 0;
    };
    mac.update(&step.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let bin = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    bin % 10u32.pow(DIGITS)
}

/// Why a typed code was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodeRefused {
    /// Not six digits.
    #[error("an authenticator code is six digits")]
    Malformed,
    /// Matches no step in the window.
    #[error("that code is not right")]
    Wrong,
    /// Matches a step that was used already.
    #[error("that code was used already; wait for the next one")]
    Reused,
}

/// Checks `typed` against the seed at `unix_secs`; answers the step it matched, which the
/// caller records as used. `last_used` is the newest step used so far: it and every step
/// before it are refused.
pub fn verify(
    seed: &[u8],
    typed: &str,
    unix_secs: i64,
    last_used: Option<u64>,
) -> Result<u64, CodeRefused> {
    let typed = typed.trim();
    if typed.len() != DIGITS as usize || !typed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CodeRefused::Malformed);
    }
    let value: u32 = typed.parse().map_err(|_| CodeRefused::Malformed)?;
    let now = step_at(unix_secs);
    let mut reused = false;
    for step in now.saturating_sub(SKEW)..=now.saturating_add(SKEW) {
        // Compare every candidate (no early exit on the code), then decide.
        if code(seed, step) == value {
            if last_used.is_some_and(|u| step <= u) {
                reused = true;
            } else {
                return Ok(step);
            }
        }
    }
    Err(if reused {
        CodeRefused::Reused
    } else {
        CodeRefused::Wrong
    })
}

/// The seed in base32 (RFC 4648, no padding), as authenticator apps take it.
pub fn base32(seed: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(seed.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in seed {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The `otpauth://` URI an authenticator app scans (Google's Key Uri Format).
pub fn otpauth_uri(seed: &[u8], issuer: &str, account: &str) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        enc(issuer),
        enc(account),
        base32(seed),
        enc(issuer)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 6238 Appendix B, SHA-1 rows (8 digits there; the last 6 are ours).
    #[test]
    fn rfc6238_vectors() {
        let seed = b"12345678901234567890";
        for (t, eight) in [
            (59i64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            assert_eq!(code(seed, step_at(t)), eight % 1_000_000, "t={t}");
        }
    }

    #[test]
    fn rfc4648_base32() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(
            base32(b"12345678901234567890"),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
    }

    #[test]
    fn malformed_codes() {
        let seed = [7u8; SEED_LEN];
        for typed in ["", "12345", "1234567", "12a456", "+12345", "１２３４５６"] {
            assert_eq!(
                verify(&seed, typed, 1_000_000, None),
                Err(CodeRefused::Malformed)
            );
        }
    }

    fn show(c: u32) -> String {
        format!("{c:06}")
    }

    /// The window is one step either side of now, no more: with RFC 6238's secret, at
    /// times of its Appendix B, the codes of the steps before and after now pass (each
    /// recorded as its own step) and those two or more steps away are refused as wrong.
    /// The times are ones whose neighbouring steps' codes all differ, so no refusal can
    /// be mistaken for a code that happened to match another step.
    #[test]
    fn the_window_is_one_step_either_side() {
        let seed = b"12345678901234567890";
        for t in [1111111109i64, 1234567890, 2000000000] {
            let now = step_at(t);
            let codes: Vec<u32> = (now - 4..=now + 4).map(|s| code(seed, s)).collect();
            let mut distinct = codes.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), codes.len(), "t={t}: {codes:?}");
            for offset in -4i64..=4 {
                let step = now.checked_add_signed(offset).unwrap();
                let got = verify(seed, &show(code(seed, step)), t, None);
                if offset.abs() <= 1 {
                    assert_eq!(got, Ok(step), "t={t}, offset {offset}");
                } else {
                    assert_eq!(got, Err(CodeRefused::Wrong), "t={t}, offset {offset}");
                }
            }
            // The same from the clock's side: the code of `t` passes until one step after
            // its own and no further, and from one step before.
            let typed = show(code(seed, now));
            for offset in -3i64..=3 {
                let at = t + offset * STEP_SECS;
                let got = verify(seed, &typed, at, None);
                assert_eq!(
                    got.is_ok(),
                    offset.abs() <= 1,
                    "t={t}, at {offset} steps: {got:?}"
                );
            }
        }
    }

    proptest! {
        /// A code is accepted exactly within one step either side of its own step.
        #[test]
        fn window(seed in proptest::collection::vec(any::<u8>(), 1..40),
                  t in 60i64..4_000_000_000, offset in -4i64..=4) {
            let step = step_at(t);
            let typed = show(code(&seed, step));
            let at = t + offset * STEP_SECS;
            match verify(&seed, &typed, at, None) {
                Ok(s) => {
                    // The step accepted is one the typed code belongs to, and within one
                    // step of the verifier's now (the rule's ±1, written out: a wider
                    // `SKEW` must fail here, not pass by the code having matched).
                    prop_assert_eq!(code(&seed, s), code(&seed, step));
                    let now = step_at(at);
                    prop_assert!(s.abs_diff(now) <= 1, "accepted step {} at now {}", s, now);
                }
                Err(e) => {
                    prop_assert_eq!(e, CodeRefused::Wrong);
                    prop_assert!(offset.abs() > 1);
                }
            }
        }

        /// Once a step is used, no code of that step or an earlier one passes again.
        #[test]
        fn used_steps_stay_used(seed in proptest::collection::vec(any::<u8>(), 1..40),
                                t in 60i64..4_000_000_000, later in 0i64..3) {
            let typed = show(code(&seed, step_at(t)));
            let used = verify(&seed, &typed, t, None);
            prop_assert!(used.is_ok());
            let used = used.unwrap_or_default();
            let again = verify(&seed, &typed, t + later * STEP_SECS / 2, Some(used));
            // Either refused as reused, or (if a neighbouring step happens to share the
            // code) accepted only for a strictly newer step.
            match again {
                Ok(s) => prop_assert!(s > used),
                Err(e) => prop_assert!(matches!(e, CodeRefused::Reused | CodeRefused::Wrong)),
            }
        }
    }
}
