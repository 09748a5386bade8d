//! Fields of a JSON body that may be absent, null or set, told apart: a PATCH leaves out
//! what it does not change and nulls what it clears; a Graph delta entry carries only what
//! changed.

use serde::{Deserialize, Deserializer};

/// With `#[serde(default, deserialize_with = "present")]` on an `Option<Option<T>>`:
/// `None` when the field is absent (serde's default), `Some(None)` when it is null.
pub fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}
