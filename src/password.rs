//! Passwords for rotation, drawn from the OS CSPRNG.
//!
//! Every password holds all four character classes and only characters Entra ID accepts.
//! The symbols are a subset of Entra's: no space, quotes or backslash, which some keyboard
//! layouts and the key's typing emulation handle badly, and which nobody types anyway.

use crate::secrets::Secret;
use rand::rngs::OsRng;
use rand::seq::SliceRandom;
use rand::Rng;

/// Shortest password generated, whatever the domain's settings say.
pub const MIN_LENGTH: u16 = 16;
/// Longest password Entra ID accepts.
pub const MAX_LENGTH: u16 = 256;

const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const DIGITS: &[u8] = b"0123456789";
const SYMBOLS: &[u8] = b"!#$%&*+-=?@^_~.,:;";

/// A new password of `length` characters (clamped to 16..=256).
pub fn generate(length: u16) -> Secret {
    let length = usize::from(length.clamp(MIN_LENGTH, MAX_LENGTH));
    let mut rng = OsRng;
    let classes = [LOWER, UPPER, DIGITS, SYMBOLS];
    let all: Vec<u8> = classes.concat();
    // One of each class first, the rest from the union, then a shuffle so the classes'
    // characters are not at fixed places.
    let mut chars: Vec<u8> = classes
        .iter()
        .map(|c| c[rng.gen_range(0..c.len())])
        .collect();
    chars.extend((chars.len()..length).map(|_| all[rng.gen_range(0..all.len())]));
    chars.shuffle(&mut rng);
    Secret::new(String::from_utf8_lossy(&chars).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// What graphsim enforces is what Entra ID enforces: every output must pass it.
        #[test]
        fn every_password_passes_entras_complexity_rules(length in 0u16..300) {
            let p = generate(length);
            let text = p.expose();
            let want = usize::from(length.clamp(MIN_LENGTH, MAX_LENGTH));
            prop_assert_eq!(text.chars().count(), want);
            prop_assert_eq!(graphsim::graph::password_problem(text), None, "{}", text);
            prop_assert!(text.chars().any(|c| c.is_ascii_lowercase()));
            prop_assert!(text.chars().any(|c| c.is_ascii_uppercase()));
            prop_assert!(text.chars().any(|c| c.is_ascii_digit()));
            prop_assert!(text.chars().any(|c| SYMBOLS.contains(&(c as u8))));
        }
    }

    #[test]
    fn passwords_do_not_repeat() {
        let a = generate(24);
        let b = generate(24);
        assert_ne!(a.expose(), b.expose());
    }
}
