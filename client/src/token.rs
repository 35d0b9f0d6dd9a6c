//! [`token_of`]: where a key sits on the token ring, computed by the same function the server
//! uses (`ringkv_wire::token`), so a key's request goes straight to its owning shard.

pub use ringkv_wire::token::{token as token_of, TOKEN_SEED};
