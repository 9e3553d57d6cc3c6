//! Names and actions parsed at the boundary: once a value has one of these types it is valid.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A DNS host name: dot-separated labels of 1 to 63 letters, digits and inner hyphens, 253
/// characters at most (no wildcard, no trailing dot).
pub fn is_dns_name(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Why a name or action was refused. The message says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "invalid project name {0:?}: use 1-63 characters of lowercase letters, digits, '-', '_' and '.', starting with a letter or digit"
    )]
    Project(String),
    #[error(
        "invalid repository name {0:?}: use lowercase path components of letters and digits separated by '.', '_', '__' or '-', joined by '/', at most 255 characters"
    )]
    Repository(String),
    #[error("invalid action {0:?}: allowed actions are \"push\" and \"pull\"")]
    Action(String),
    #[error("no actions given: ask for \"pull\", \"push\" or both")]
    NoActions,
}

/// A project as named in configuration and in `?project=`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ProjectName(String);

impl ProjectName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let bytes = s.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes[0].is_ascii_lowercase() | bytes[0].is_ascii_digit()
            && bytes.iter().all(|&b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            });
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::Project(truncate_for_message(s)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ProjectName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A repository name following the OCI distribution grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RepositoryName(String);

impl RepositoryName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() || s.len() > 255 || !s.split('/').all(valid_path_component) {
            return Err(NameError::Repository(truncate_for_message(s)));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One path component: alphanumeric runs joined by exactly one of `.`, `_`, `__` or a run of `-`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = sep == b"." || sep == b"_" || sep == b"__" || sep.iter().all(|&x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RepositoryName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Keeps hostile input from bloating an error message.
fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A registry action Rise can grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pull,
    Push,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Action::Pull => 1,
            Action::Push => 2,
        }
    }
}

impl FromStr for Action {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pull" => Ok(Action::Pull),
            "push" => Ok(Action::Push),
            other => Err(NameError::Action(truncate_for_message(other))),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of actions. Pushing needs pulling in every registry Rise supports (layer existence
/// checks are pulls), so `push` alone is never granted: see [`Actions::normalise_push`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const PULL: Actions = Actions(1);
    pub const PUSH_PULL: Actions = Actions(3);

    pub fn from_iter_actions(actions: impl IntoIterator<Item = Action>) -> Self {
        Actions(actions.into_iter().fold(0, |acc, a| acc | a.bit()))
    }

    /// Parse a comma-separated list such as `push,pull`. Empty input is an error.
    pub fn parse_list(s: &str) -> Result<Self, NameError> {
        let mut set = Actions::NONE;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            set = set.with(part.parse()?);
        }
        if set.is_empty() {
            return Err(NameError::NoActions);
        }
        Ok(set)
    }

    pub fn with(self, a: Action) -> Self {
        Actions(self.0 | a.bit())
    }

    pub fn contains(self, a: Action) -> bool {
        self.0 & a.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn intersect(self, other: Actions) -> Actions {
        Actions(self.0 & other.0)
    }

    pub fn is_subset_of(self, other: Actions) -> bool {
        self.0 & !other.0 == 0
    }

    /// `push` implies `pull`: a client cannot push without checking which blobs exist.
    pub fn normalise_push(self) -> Actions {
        if self.contains(Action::Push) {
            self.with(Action::Pull)
        } else {
            self
        }
    }

    pub fn iter(self) -> impl Iterator<Item = Action> {
        [Action::Pull, Action::Push]
            .into_iter()
            .filter(move |a| self.contains(*a))
    }

    /// Canonical order: `pull`, `push`.
    pub fn to_vec(self) -> Vec<Action> {
        self.iter().collect()
    }
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl fmt::Display for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Action::as_str).collect();
        f.write_str(&names.join(","))
    }
}

impl Serialize for Actions {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Actions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<Action>::deserialize(d)?;
        if list.is_empty() {
            return Err(serde::de::Error::custom(NameError::NoActions));
        }
        Ok(Actions::from_iter_actions(list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_project(input: &str, ok: bool) {
        assert_eq!(ProjectName::parse(input).is_ok(), ok, "project {input:?}");
    }

    fn check_repo(input: &str, ok: bool) {
        assert_eq!(
            RepositoryName::parse(input).is_ok(),
            ok,
            "repository {input:?}"
        );
    }

    #[test]
    fn project_names() {
        for good in ["my-app", "a", "app.v2", "x_1", "0day"] {
            check_project(good, true);
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "My-App",
            "-app",
            "a/b",
            "a b",
            "app%00",
            "ü",
            long.as_str(),
        ] {
            check_project(bad, false);
        }
    }

    #[test]
    fn repository_names() {
        for good in [
            "my-app",
            "team/my-app",
            "a__b",
            "a--b",
            "docker-local/x.y/z",
        ] {
            check_repo(good, true);
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "a..b", "a___b", "-a", "a-", "a:b", "../x",
        ] {
            check_repo(bad, false);
        }
    }

    #[test]
    fn actions_parse_and_normalise() {
        assert_eq!(Actions::parse_list("pull").ok(), Some(Actions::PULL));
        assert_eq!(
            Actions::parse_list("push")
                .map(Actions::normalise_push)
                .ok(),
            Some(Actions::PUSH_PULL)
        );
        assert_eq!(
            Actions::parse_list(" push , pull ").ok(),
            Some(Actions::PUSH_PULL)
        );
        assert_eq!(Actions::parse_list(""), Err(NameError::NoActions));
        assert!(matches!(
            Actions::parse_list("delete"),
            Err(NameError::Action(_))
        ));
        assert_eq!(Actions::PUSH_PULL.intersect(Actions::PULL), Actions::PULL);
        assert!(Actions::PULL.is_subset_of(Actions::PUSH_PULL));
        assert!(!Actions::PUSH_PULL.is_subset_of(Actions::PULL));
        assert_eq!(Actions::PUSH_PULL.to_string(), "pull,push");
    }

    #[test]
    fn hostile_input_is_truncated_in_messages() {
        let long = "X".repeat(10_000);
        let msg = ProjectName::parse(&long).expect_err("too long").to_string();
        assert!(msg.len() < 400, "message is {} bytes", msg.len());
    }
}
