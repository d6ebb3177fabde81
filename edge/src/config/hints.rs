//! A route's `early_hints`: which clients get the 103 Early Hints its backend
//! sends before the final response.

use super::walk::FromToml;

/// Which clients a route passes the backend's 103 Early Hints to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EarlyHints {
    /// Every HTTP/1.1, HTTP/2 and HTTP/3 client (RFC 9110 15.2: a proxy
    /// forwards 1xx responses). HTTP/1.0 clients never get a 1xx.
    #[default]
    All,
    /// HTTP/2 and HTTP/3 clients only: RFC 8297 3 warns that some HTTP/1.1
    /// clients mishandle an unexpected 1xx.
    H2AndH3,
    /// None: interim responses are dropped.
    Off,
}

impl EarlyHints {
    const ALL: [EarlyHints; 3] = [EarlyHints::All, EarlyHints::H2AndH3, EarlyHints::Off];

    pub fn as_str(self) -> &'static str {
        match self {
            EarlyHints::All => "all",
            EarlyHints::H2AndH3 => "h2_and_h3",
            EarlyHints::Off => "off",
        }
    }

    /// Whether a client speaking `version` gets them.
    pub fn passes(self, version: http::Version) -> bool {
        match self {
            EarlyHints::All => version >= http::Version::HTTP_11,
            EarlyHints::H2AndH3 => version >= http::Version::HTTP_2,
            EarlyHints::Off => false,
        }
    }
}

impl FromToml for EarlyHints {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        let s = <String as FromToml>::from_toml(v)?;
        EarlyHints::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not one of \"all\", \"h2_and_h3\" or \"off\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Version;

    #[test]
    fn which_clients_get_hints() {
        assert!(EarlyHints::All.passes(Version::HTTP_11));
        assert!(!EarlyHints::All.passes(Version::HTTP_10));
        assert!(!EarlyHints::H2AndH3.passes(Version::HTTP_11));
        assert!(EarlyHints::H2AndH3.passes(Version::HTTP_2));
        assert!(EarlyHints::H2AndH3.passes(Version::HTTP_3));
        assert!(!EarlyHints::Off.passes(Version::HTTP_3));
    }
}
