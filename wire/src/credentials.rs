//! [`Credentials`]: the user and password an `Auth` request carries.

use bytes::Bytes;

use crate::limits::{PASSWORD_BYTES_MAX, USER_NAME_BYTES_MAX};
use crate::WireError;

/// The user a password belongs to when none is named (as in Redis).
pub const DEFAULT_USER: &str = "default";

/// A user name and its password. `Debug` never shows the password, so credentials can be
/// logged with the request that carried them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// The user; [`DEFAULT_USER`] when the request named none.
    pub user: String,
    pub password: Bytes,
}

impl Credentials {
    /// `password` for `user`.
    pub fn new(user: impl Into<String>, password: impl Into<Bytes>) -> Self {
        Credentials { user: user.into(), password: password.into() }
    }

    /// Checks the lengths a server accepts.
    pub fn validate(&self) -> Result<(), WireError> {
        if self.user.is_empty() || self.user.len() > USER_NAME_BYTES_MAX {
            return Err(WireError::malformed(format!(
                "user name of {} bytes; it must be 1 to {USER_NAME_BYTES_MAX}",
                self.user.len()
            )));
        }
        if self.password.len() > PASSWORD_BYTES_MAX {
            return Err(WireError::malformed(format!(
                "password of {} bytes; it must be at most {PASSWORD_BYTES_MAX}",
                self.password.len()
            )));
        }
        Ok(())
    }

    /// Bytes the credentials add to a frame.
    pub fn payload_bytes(&self) -> usize {
        self.user.len() + self.password.len()
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &format_args!("<{} bytes, hidden>", self.password.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let text = format!("{:?}", Credentials::new("app", "hunter2"));
        assert!(text.contains("app"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn lengths_are_bounded() {
        assert!(Credentials::new("app", "secret").validate().is_ok());
        assert!(Credentials::new("", "secret").validate().is_err());
        assert!(Credentials::new("u".repeat(USER_NAME_BYTES_MAX + 1), "secret").validate().is_err());
        assert!(Credentials::new("app", vec![0; PASSWORD_BYTES_MAX + 1]).validate().is_err());
    }
}
