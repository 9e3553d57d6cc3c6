//! Project-based policy: which principals may `push` or `pull` which project's repository, and on
//! which registry ("project X can only push to registry Y").
//!
//! Policy is declarative configuration ([`crate::config::ProjectConfig`]); this module speaks
//! domain types only.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::auth::Principal;
use crate::config::Config;
use crate::registry::{Actions, ProjectName, RepositoryName};

/// One `[[projects.NAME.allow]]` entry. Every condition given must hold; `issuer` is required so a
/// subject pattern is always read relative to the issuer that vouches for it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// What a matching caller may do.
    pub actions: Actions,
    /// The configured issuer name (`local` or a key of `[auth.issuers]`).
    #[serde(default)]
    pub issuer: Option<String>,
    /// Subject pattern: exact, or a glob with `*` and `?`.
    #[serde(default)]
    pub subject: Option<Pattern>,
    /// The caller must be in at least one of these groups (patterns allowed).
    #[serde(default)]
    pub groups: Vec<Pattern>,
    /// Every listed claim must match its pattern: a string, or a boolean or number as JSON
    /// writes it (`true`, `123`); for an array, any such element (arrays inside it never match).
    /// The pattern may be written as a TOML boolean or number too (`fork = false`).
    #[serde(default, deserialize_with = "claim_patterns")]
    pub claims: BTreeMap<String, Pattern>,
    /// Set deliberately to let every token of an OIDC issuer match a rule that names no
    /// subject, group or claim (an issuer that signs only for your own organisation).
    #[serde(default)]
    pub any_subject: bool,
}

impl Rule {
    pub fn validate(&self) -> Result<(), String> {
        let Some(issuer) = &self.issuer else {
            return Err(
                "a rule must name its `issuer`: subjects and groups only mean something relative to the issuer that signs them"
                    .into(),
            );
        };
        // An OIDC issuer may sign for anyone who asks it: GitHub Actions signs for every
        // workflow on github.com, each choosing its own audience. A rule with only the issuer
        // would let all of them in, and so would one whose conditions match anything (`*`),
        // or only claims every accepted token carries (`aud`, `iss`). A safety net for the
        // obvious mistakes, not a proof that a rule is narrow.
        let narrows = |p: &Pattern| !p.matches_anything();
        let unconditioned = !self.subject.as_ref().is_some_and(narrows)
            && !self.groups.iter().any(narrows)
            && !self
                .claims
                .iter()
                .any(|(name, p)| !matches!(name.as_str(), "aud" | "iss") && narrows(p));
        if unconditioned && issuer != crate::config::LOCAL_ISSUER_NAME && !self.any_subject {
            return Err(format!(
                "the rule accepts every token issuer {issuer:?} signs: add a subject, groups or claims (GitHub Actions: e.g. subject = \"repo:my-org/my-app:ref:refs/heads/main\"), or set any_subject = true if that issuer signs only for your organisation"
            ));
        }
        Ok(())
    }

    pub fn matches(&self, p: &Principal) -> bool {
        if self.issuer.as_deref().is_some_and(|i| i != p.issuer) {
            return false;
        }
        if let Some(s) = &self.subject
            && !s.matches(&p.subject)
        {
            return false;
        }
        if !self.groups.is_empty()
            && !self
                .groups
                .iter()
                .any(|g| p.groups.iter().any(|pg| g.matches(pg)))
        {
            return false;
        }
        self.claims.iter().all(|(name, pattern)| {
            p.claims
                .get(name)
                .is_some_and(|v| claim_matches(pattern, v))
        })
    }
}

fn claim_matches(pattern: &Pattern, value: &Value) -> bool {
    match value {
        Value::Array(items) => items.iter().any(|v| scalar_matches(pattern, v)),
        scalar => scalar_matches(pattern, scalar),
    }
}

fn scalar_matches(pattern: &Pattern, value: &Value) -> bool {
    match value {
        Value::String(s) => pattern.matches(s),
        Value::Bool(b) => pattern.matches(if *b { "true" } else { "false" }),
        Value::Number(n) => pattern.matches(&n.to_string()),
        Value::Null | Value::Object(_) | Value::Array(_) => false,
    }
}

/// A string that is matched exactly, or as a glob when it contains `*` or `?`.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    glob: Option<wildmatch::WildMatch>,
}

impl Pattern {
    pub fn new(source: &str) -> Self {
        let glob = source
            .contains(['*', '?'])
            .then(|| wildmatch::WildMatch::new(source));
        Self {
            source: source.to_owned(),
            glob,
        }
    }

    /// A glob made only of `*` and `?` (at least one `*`): any value of any length matches.
    pub fn matches_anything(&self) -> bool {
        self.source.contains('*') && self.source.chars().all(|c| matches!(c, '*' | '?'))
    }

    pub fn matches(&self, candidate: &str) -> bool {
        match &self.glob {
            Some(g) => g.matches(candidate),
            None => self.source == candidate,
        }
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(serde::de::Error::custom("a pattern may not be empty"));
        }
        Ok(Pattern::new(&s))
    }
}

/// The `claims` of a rule: each pattern a string, or a TOML boolean or number standing for the
/// text JSON writes for it (`fork = false` is `fork = "false"`, `run_attempt = 1` is `"1"`), which
/// is what a boolean or number claim is matched against.
pub fn claim_patterns<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Pattern>, D::Error> {
    struct ClaimPattern(Pattern);

    impl<'de> Deserialize<'de> for ClaimPattern {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(ClaimPatternVisitor)
        }
    }

    struct ClaimPatternVisitor;

    impl serde::de::Visitor<'_> for ClaimPatternVisitor {
        type Value = ClaimPattern;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string (exact, or a glob with * and ?), a boolean or a number")
        }

        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ClaimPattern, E> {
            if s.is_empty() {
                return Err(E::custom("a pattern may not be empty"));
            }
            Ok(ClaimPattern(Pattern::new(s)))
        }

        fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<ClaimPattern, E> {
            Ok(ClaimPattern(Pattern::new(if b { "true" } else { "false" })))
        }

        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ClaimPattern, E> {
            Ok(ClaimPattern(Pattern::new(&n.to_string())))
        }

        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ClaimPattern, E> {
            Ok(ClaimPattern(Pattern::new(&n.to_string())))
        }

        fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<ClaimPattern, E> {
            // The text serde_json gives the claim's number, which is what it is matched against.
            serde_json::Number::from_f64(n)
                .map(|n| ClaimPattern(Pattern::new(&n.to_string())))
                .ok_or_else(|| E::custom("a claim pattern may not be nan or inf"))
        }
    }

    let patterns = BTreeMap::<String, ClaimPattern>::deserialize(d)?;
    Ok(patterns.into_iter().map(|(k, v)| (k, v.0)).collect())
}

/// A project as policy sees it.
#[derive(Debug, Clone)]
pub struct Project {
    pub name: ProjectName,
    /// Configured registry name.
    pub registry: String,
    pub repository: RepositoryName,
    pub ttl: Option<Duration>,
    rules: Vec<Rule>,
}

impl Project {
    /// The union of the actions of every rule that matches `principal`; `push` implies `pull`.
    pub fn allowed_actions(&self, principal: &Principal) -> Actions {
        self.rules
            .iter()
            .filter(|r| r.matches(principal))
            .fold(Actions::NONE, |acc, r| {
                Actions::from_iter_actions(acc.iter().chain(r.actions.iter()))
            })
            .normalise_push()
    }
}

/// All projects, indexed by name and by (registry, repository).
#[derive(Debug, Default)]
pub struct Policy {
    projects: BTreeMap<ProjectName, Project>,
    by_repository: HashMap<(String, RepositoryName), ProjectName>,
    /// `[audit] admins`: who may read the audit log.
    audit_admins: Vec<Rule>,
}

impl Policy {
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let mut policy = Policy {
            audit_admins: config.audit.admins.iter().map(|a| a.to_rule()).collect(),
            ..Policy::default()
        };
        for (name, p) in &config.projects {
            let repository = match &p.repository {
                Some(r) => r.clone(),
                None => RepositoryName::parse(name.as_str()).map_err(|e| e.to_string())?,
            };
            let key = (p.registry.clone(), repository.clone());
            if let Some(other) = policy.by_repository.get(&key) {
                return Err(format!(
                    "projects {other} and {name} both use repository {repository} on registry {}: give each project its own repository",
                    p.registry
                ));
            }
            policy.by_repository.insert(key, name.clone());
            policy.projects.insert(
                name.clone(),
                Project {
                    name: name.clone(),
                    registry: p.registry.clone(),
                    repository,
                    ttl: p.ttl,
                    rules: p.allow.clone(),
                },
            );
        }
        Ok(policy)
    }

    pub fn project(&self, name: &ProjectName) -> Option<&Project> {
        self.projects.get(name)
    }

    /// The project that owns `repository` on `registry`, if any.
    pub fn project_for_repository(
        &self,
        registry: &str,
        repository: &RepositoryName,
    ) -> Option<&Project> {
        self.by_repository
            .get(&(registry.to_owned(), repository.clone()))
            .and_then(|n| self.projects.get(n))
    }

    pub fn projects(&self) -> impl Iterator<Item = &Project> {
        self.projects.values()
    }

    /// Whether `principal` may read the audit log (`[audit] admins`).
    pub fn is_audit_admin(&self, principal: &Principal) -> bool {
        self.audit_admins.iter().any(|r| r.matches(principal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn principal(issuer: &str, subject: &str, groups: &[&str], claims: Value) -> Principal {
        Principal {
            issuer: issuer.into(),
            issuer_url: format!("https://{issuer}.example"),
            subject: subject.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            claims: claims.as_object().cloned().unwrap_or_default(),
            expires_at: SystemTime::now(),
        }
    }

    fn rule(toml_text: &str) -> Rule {
        toml::from_str(toml_text).expect("rule parses")
    }

    fn check(rule_text: &str, p: &Principal, expect: bool) {
        assert_eq!(
            rule(rule_text).matches(p),
            expect,
            "rule {rule_text} vs {p:?}"
        );
    }

    #[test]
    fn github_actions_subject_on_main_only() {
        let r = r#"issuer = "github"
                   subject = "repo:org/app:ref:refs/heads/main"
                   actions = ["push"]"#;
        let main = principal(
            "github",
            "repo:org/app:ref:refs/heads/main",
            &[],
            Value::Null,
        );
        let branch = principal(
            "github",
            "repo:org/app:ref:refs/heads/dev",
            &[],
            Value::Null,
        );
        let other_issuer = principal(
            "gitlab",
            "repo:org/app:ref:refs/heads/main",
            &[],
            Value::Null,
        );
        check(r, &main, true);
        check(r, &branch, false);
        check(r, &other_issuer, false);
    }

    #[test]
    fn globs_groups_and_claims() {
        let p = principal(
            "corp",
            "alice",
            &["developers"],
            serde_json::json!({"repository": "org/app", "ref": "refs/tags/v1.2", "runner": ["a", "b"], "admin": true}),
        );
        check(
            r#"issuer = "corp"
                 subject = "ali*"
                 actions = ["pull"]"#,
            &p,
            true,
        );
        check(
            r#"issuer = "corp"
                 groups = ["ops", "dev*"]
                 actions = ["pull"]"#,
            &p,
            true,
        );
        check(
            r#"issuer = "corp"
                 groups = ["ops"]
                 actions = ["pull"]"#,
            &p,
            false,
        );
        check(
            r#"issuer = "corp"
                 claims = { repository = "org/app", ref = "refs/tags/v*" }
                 actions = ["push"]"#,
            &p,
            true,
        );
        check(
            r#"issuer = "corp"
                 claims = { repository = "org/other" }
                 actions = ["push"]"#,
            &p,
            false,
        );
        check(
            r#"issuer = "corp"
                 claims = { runner = "b", admin = "true" }
                 actions = ["push"]"#,
            &p,
            true,
        );
        check(
            r#"issuer = "corp"
                 claims = { missing = "*" }
                 actions = ["push"]"#,
            &p,
            false,
        );
        // Arrays inside arrays, and objects, never match: only one level of scalars.
        let nested = principal(
            "corp",
            "alice",
            &[],
            serde_json::json!({"admin": [[["true"]]], "team": {"name": "ops"}}),
        );
        check(
            r#"issuer = "corp"
                 claims = { admin = "true" }
                 actions = ["push"]"#,
            &nested,
            false,
        );
        check(
            r#"issuer = "corp"
                 claims = { team = "*" }
                 actions = ["push"]"#,
            &nested,
            false,
        );
    }

    #[test]
    fn claim_patterns_may_be_toml_booleans_and_numbers() {
        let p = principal(
            "github",
            "repo:org/app:ref:refs/heads/main",
            &[],
            serde_json::json!({"fork": false, "run_attempt": 1, "ratio": 1.5, "flags": [true], "repository": "org/app"}),
        );
        // Written as TOML values, they match the claim as JSON writes it, like their strings.
        check(
            r#"issuer = "github"
                 claims = { fork = false, run_attempt = 1, ratio = 1.5, flags = true }
                 actions = ["push"]"#,
            &p,
            true,
        );
        check(
            r#"issuer = "github"
                 claims = { fork = "false", run_attempt = "1" }
                 actions = ["push"]"#,
            &p,
            true,
        );
        check(
            r#"issuer = "github"
                 claims = { fork = true }
                 actions = ["push"]"#,
            &p,
            false,
        );
        check(
            r#"issuer = "github"
                 claims = { run_attempt = 2 }
                 actions = ["push"]"#,
            &p,
            false,
        );
        // A boolean or number claim pattern narrows the rule like a string one.
        let r = rule(
            r#"issuer = "github"
                 claims = { fork = false }
                 actions = ["push"]"#,
        );
        assert!(r.validate().is_ok());
        // Other TOML values and empty strings are still refused, naming what is expected.
        for bad in [
            r#"claims = { fork = [false] }"#,
            r#"claims = { fork = { a = 1 } }"#,
            r#"claims = { fork = "" }"#,
        ] {
            let text = format!("issuer = \"github\"\n{bad}\nactions = [\"push\"]");
            assert!(toml::from_str::<Rule>(&text).is_err(), "{bad} parses");
        }
        let admin: crate::config::AdminRule = toml::from_str(
            r#"issuer = "corp"
                              claims = { admin = true }"#,
        )
        .expect("an admin rule takes a boolean claim pattern");
        assert!(admin.to_rule().matches(&principal(
            "corp",
            "alice",
            &[],
            serde_json::json!({"admin": true})
        )));
    }

    #[test]
    fn exact_patterns_do_not_glob() {
        let p = principal("corp", "a.b", &[], Value::Null);
        check(
            r#"issuer = "corp"
                 subject = "a-b"
                 actions = ["pull"]"#,
            &p,
            false,
        );
    }

    #[test]
    fn rule_without_issuer_is_invalid() {
        assert!(rule(r#"actions = ["pull"]"#).validate().is_err());
        // An OIDC issuer's rule must narrow who it admits, unless told to take everyone.
        let e = rule(
            r#"issuer = "github"
actions = ["push"]"#,
        )
        .validate()
        .expect_err("issuer only");
        assert!(e.contains("any_subject = true"), "{e}");
        // Conditions that match everything, or only what every accepted token carries.
        for open in [
            "issuer = \"github\"\nsubject = \"*\"\nactions = [\"push\"]",
            "issuer = \"github\"\ngroups = [\"**\"]\nactions = [\"push\"]",
            "issuer = \"github\"\nclaims = { aud = \"rise\", iss = \"x\" }\nactions = [\"push\"]",
        ] {
            assert!(rule(open).validate().is_err(), "{open}");
        }
        for ok in [
            "issuer = \"github\"\nsubject = \"repo:org/app:ref:refs/heads/main\"\nactions = [\"push\"]",
            "issuer = \"github\"\nclaims = { repository = \"org/app\" }\nactions = [\"push\"]",
            "issuer = \"corp\"\ngroups = [\"dev\"]\nactions = [\"push\"]",
            "issuer = \"corp\"\nany_subject = true\nactions = [\"pull\"]",
            "issuer = \"local\"\nactions = [\"pull\"]",
        ] {
            assert!(rule(ok).validate().is_ok(), "{ok}");
        }
    }

    #[test]
    fn union_of_matching_rules_and_push_implies_pull() {
        let project = Project {
            name: ProjectName::parse("app").expect("valid"),
            registry: "default".into(),
            repository: RepositoryName::parse("app").expect("valid"),
            ttl: None,
            rules: vec![
                rule(
                    r#"issuer = "corp"
                        groups = ["developers"]
                        actions = ["pull"]"#,
                ),
                rule(
                    r#"issuer = "corp"
                        subject = "alice"
                        actions = ["push"]"#,
                ),
            ],
        };
        let alice = principal("corp", "alice", &[], Value::Null);
        let dev = principal("corp", "bob", &["developers"], Value::Null);
        let stranger = principal("corp", "eve", &[], Value::Null);
        assert_eq!(project.allowed_actions(&alice), Actions::PUSH_PULL);
        assert_eq!(project.allowed_actions(&dev), Actions::PULL);
        assert_eq!(project.allowed_actions(&stranger), Actions::NONE);
    }
}
