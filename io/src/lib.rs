//! placeholder crate root; replaced by the io helper
