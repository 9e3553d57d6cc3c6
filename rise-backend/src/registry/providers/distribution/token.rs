//! Registry tokens (Docker registry token spec): the scopes a client asks for, the access Rise
//! grants, the ES256 JWT a Distribution registry verifies, and the invariants checked on every
//! minted token before it leaves Rise.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretString;
use serde::Serialize;
use serde_json::Value;

use super::keys::KeySet;
use crate::registry::{Action, Actions, NameError, RepositoryName};

/// Scopes beyond this many in one request are refused: no client needs them, and each costs work.
pub const MAX_SCOPES: usize = 32;

/// A scope Rise can grant: `repository:NAME:ACTIONS` with at least one known action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryScope {
    pub name: RepositoryName,
    pub actions: Actions,
}

/// A scope that cannot be parsed at all. Well-formed scopes Rise never grants are not errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("invalid scope {0:?}: expected TYPE:NAME:ACTIONS, such as repository:my-app:pull,push")]
    Malformed(String),
    #[error("invalid scope: {0}")]
    Repository(#[from] NameError),
    #[error("too many scopes: at most {MAX_SCOPES} per request")]
    TooMany,
}

/// Parse one scope (`resourcetype[(class)]:name:action[,action]`).
///
/// `Ok(None)` means well-formed but never granted: other resource types (`registry:catalog:*`),
/// resource classes (`repository(plugin):...`), and scopes with no action Rise knows (`*`,
/// `delete`). Unknown actions beside known ones are dropped.
pub fn parse_scope(scope: &str) -> Result<Option<RepositoryScope>, ScopeError> {
    let malformed = || ScopeError::Malformed(scope.chars().take(80).collect());
    let (kind, rest) = scope.split_once(':').ok_or_else(malformed)?;
    // The name may itself contain ':' (a host with a port), so actions follow the last one.
    let (name, actions) = rest.rsplit_once(':').ok_or_else(malformed)?;
    if kind.is_empty() || name.is_empty() {
        return Err(malformed());
    }
    if kind != "repository" {
        return Ok(None);
    }
    let name = RepositoryName::parse(name)?;
    let actions = Actions::from_iter_actions(actions.split(',').filter_map(|a| a.parse().ok()));
    Ok((!actions.is_empty()).then_some(RepositoryScope { name, actions }))
}

/// Parse every `scope` value of a request; a value may hold several scopes separated by spaces
/// (the OAuth2 form), and the parameter may repeat (the GET form). Scopes naming one repository
/// are merged into one, in the order repositories first appear: each is audited once.
pub fn parse_scopes<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<RepositoryScope>, ScopeError> {
    let mut scopes = Vec::new();
    let mut seen = 0;
    for scope in values.into_iter().flat_map(|v| v.split(' ')) {
        if scope.is_empty() {
            continue;
        }
        seen += 1;
        if seen > MAX_SCOPES {
            return Err(ScopeError::TooMany);
        }
        let Some(scope) = parse_scope(scope)? else {
            continue;
        };
        match scopes
            .iter_mut()
            .find(|known: &&mut RepositoryScope| known.name == scope.name)
        {
            Some(known) => {
                known.actions =
                    Actions::from_iter_actions(known.actions.iter().chain(scope.actions.iter()));
            }
            None => scopes.push(scope),
        }
    }
    Ok(scopes)
}

/// What a registry token lets its bearer do on one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub name: RepositoryName,
    pub actions: Actions,
}

/// The access to put in a token: each requested repository's actions intersected with what
/// `allowed` says the caller may do there. Repeated scopes for one repository are merged;
/// repositories left with no action are omitted, so the registry answers `insufficient_scope`.
pub fn intersect(
    requested: &[RepositoryScope],
    mut allowed: impl FnMut(&RepositoryName) -> Actions,
) -> Vec<Access> {
    let mut wanted: BTreeMap<&RepositoryName, Actions> = BTreeMap::new();
    for scope in requested {
        let entry = wanted.entry(&scope.name).or_default();
        *entry = Actions::from_iter_actions(entry.iter().chain(scope.actions.iter()));
    }
    wanted
        .into_iter()
        .filter_map(|(name, actions)| {
            let granted = actions.intersect(allowed(name));
            (!granted.is_empty()).then(|| Access {
                name: name.clone(),
                actions: granted,
            })
        })
        .collect()
}

/// A minted registry token. The token is a secret: it is exposed once, in the `/token` reply.
#[derive(Debug)]
pub struct RegistryToken {
    pub token: SecretString,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

/// What the token's claims must say; see [`mint`].
#[derive(Debug, Clone, Copy)]
pub struct TokenSpec<'a> {
    /// `iss`: the registry's `auth.token.issuer`.
    pub issuer: &'a str,
    /// `aud`: the registry's `auth.token.service`.
    pub service: &'a str,
    /// `sub`: who the registry logs as the user.
    pub subject: &'a str,
    pub access: &'a [Access],
    pub now: SystemTime,
    /// `exp`; callers cap it by their own credential's expiry.
    pub expires_at: SystemTime,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<AccessClaim<'a>>,
}

#[derive(Serialize)]
struct AccessClaim<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    actions: Vec<Action>,
}

/// Why a token was not handed out.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The caller's credential expires before a token would be valid for a second.
    #[error("the credential has expired")]
    CallerExpired,
    /// Signing failed, or the minted token breaks an invariant the registry relies on. A
    /// defect in Rise: the token is withheld.
    #[error("registry token withheld: {0}")]
    Internal(String),
}

/// Sign a registry token with the current key of `keys`, then check it as the registry would
/// (see [`check_invariants`]): a token the registry would reject never leaves Rise.
pub fn mint(keys: &KeySet, spec: &TokenSpec<'_>) -> Result<RegistryToken, MintError> {
    let iat = unix_secs(spec.now);
    let exp = unix_secs(spec.expires_at);
    if exp <= iat {
        return Err(MintError::CallerExpired);
    }
    let claims = Claims {
        iss: spec.issuer,
        sub: spec.subject,
        aud: spec.service,
        exp,
        nbf: iat,
        iat,
        jti: uuid::Uuid::new_v4().simple().to_string(),
        access: spec
            .access
            .iter()
            .map(|a| AccessClaim {
                kind: "repository",
                name: a.name.as_str(),
                actions: a.actions.to_vec(),
            })
            .collect(),
    };
    let json = serde_json::to_vec(&claims)
        .map_err(|e| MintError::Internal(format!("serialising claims: {e}")))?;
    let token = keys
        .current()
        .sign_jwt(&json)
        .map_err(|e| MintError::Internal(e.to_string()))?;
    check_invariants(
        &token,
        &Expectations {
            issuer: spec.issuer,
            service: spec.service,
            keys,
            now: iat,
        },
    )
    .map_err(|v| MintError::Internal(format!("minted token breaks an invariant: {v}")))?;
    Ok(RegistryToken {
        token: SecretString::from(token),
        issued_at: UNIX_EPOCH + Duration::from_secs(iat),
        expires_at: UNIX_EPOCH + Duration::from_secs(exp),
    })
}

/// What a registry configured with `issuer`, `service` and the bundle of `keys` requires.
#[derive(Debug, Clone, Copy)]
pub struct Expectations<'a> {
    pub issuer: &'a str,
    pub service: &'a str,
    pub keys: &'a KeySet,
    /// Unix seconds.
    pub now: u64,
}

/// Check a compact JWT against what Distribution 2.8 accepts: `alg` ES256 or RS256, a `kid` whose
/// certificate is in the bundle, `iss` equal to the issuer, `aud` a single string equal to the
/// service (an array is refused by the registry), `exp` an integer in the future, `nbf`/`iat`
/// integers, and `access` entries of type `repository` with valid names and known actions.
///
/// Reads the token as the registry would, independent of how [`mint`] built it. Returns what is
/// wrong; never the token.
pub fn check_invariants(token: &str, expect: &Expectations<'_>) -> Result<(), String> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a compact JWS of three parts".into());
    };
    let header = decode_object(header, "header")?;
    let claims = decode_object(claims, "claims")?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| "signature is not base64url")?;

    match header.get("alg").and_then(Value::as_str) {
        Some("ES256") if signature.len() == 64 => {}
        Some("ES256") => return Err("ES256 signature is not 64 bytes of raw r||s".into()),
        Some("RS256") if !signature.is_empty() => {}
        other => return Err(format!("alg {other:?} is not ES256 or RS256")),
    }
    if let Some(typ) = header.get("typ")
        && typ != "JWT"
    {
        return Err(format!("typ {typ} is not \"JWT\""));
    }
    match header.get("kid").and_then(Value::as_str) {
        Some(kid) if expect.keys.contains_kid(kid) => {}
        Some(kid) => return Err(format!("kid {kid} is not in the certificate bundle")),
        None => return Err("no kid in the header".into()),
    }

    match claims.get("iss") {
        Some(Value::String(iss)) if iss == expect.issuer => {}
        other => return Err(format!("iss {other:?} is not {:?}", expect.issuer)),
    }
    match claims.get("aud") {
        Some(Value::String(aud)) if aud == expect.service => {}
        Some(Value::String(aud)) => {
            return Err(format!(
                "aud {aud:?} is not the service {:?}",
                expect.service
            ));
        }
        other => return Err(format!("aud {other:?} is not a single string")),
    }
    match claims.get("exp").and_then(Value::as_u64) {
        Some(exp) if exp > expect.now => {}
        Some(exp) => return Err(format!("exp {exp} is not after now ({})", expect.now)),
        None => return Err("exp is missing or not an integer".into()),
    }
    for claim in ["nbf", "iat"] {
        match claims.get(claim) {
            None => {}
            Some(v) if v.as_u64().is_some_and(|t| t <= expect.now) => {}
            Some(v) => return Err(format!("{claim} {v} is not an integer at or before now")),
        }
    }
    let Some(Value::Array(access)) = claims.get("access") else {
        return Err("access is missing or not an array".into());
    };
    for entry in access {
        check_access_entry(entry)?;
    }
    Ok(())
}

fn check_access_entry(entry: &Value) -> Result<(), String> {
    if entry.get("type").and_then(Value::as_str) != Some("repository") {
        return Err(format!("access entry type is not \"repository\": {entry}"));
    }
    let name = entry
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    RepositoryName::parse(name).map_err(|e| format!("access entry: {e}"))?;
    let Some(Value::Array(actions)) = entry.get("actions") else {
        return Err(format!("access entry for {name} has no actions array"));
    };
    if actions.is_empty() {
        return Err(format!("access entry for {name} grants nothing"));
    }
    for action in actions {
        if !matches!(action.as_str(), Some("pull" | "push")) {
            return Err(format!("access entry for {name} has action {action}"));
        }
    }
    Ok(())
}

fn decode_object(part: &str, what: &str) -> Result<serde_json::Map<String, Value>, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| format!("{what} is not base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(format!("{what} is not a JSON object")),
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::super::keys::SigningKey;
    use super::*;
    use secrecy::ExposeSecret;

    fn repo(name: &str) -> RepositoryName {
        RepositoryName::parse(name).expect("valid")
    }

    /// `None` = well-formed, nothing granted; `Some(Err(code))` = refused.
    fn check_scope(input: &str, expect: Result<Option<(&str, Actions)>, &str>) {
        let got = parse_scope(input);
        let got = match &got {
            Ok(Some(s)) => Ok(Some((s.name.as_str(), s.actions))),
            Ok(None) => Ok(None),
            Err(ScopeError::Malformed(_)) => Err("malformed"),
            Err(ScopeError::Repository(_)) => Err("repository"),
            Err(ScopeError::TooMany) => Err("too_many"),
        };
        assert_eq!(got, expect, "scope {input:?}");
    }

    #[test]
    fn scope_parsing() {
        use Actions as A;
        check_scope(
            "repository:my-app:pull,push",
            Ok(Some(("my-app", A::PUSH_PULL))),
        );
        check_scope(
            "repository:my-app:push,pull",
            Ok(Some(("my-app", A::PUSH_PULL))),
        );
        check_scope("repository:my-app:pull", Ok(Some(("my-app", A::PULL))));
        let push_only = A::from_iter_actions([Action::Push]);
        check_scope("repository:my-app:push", Ok(Some(("my-app", push_only))));
        check_scope("repository:team/app:pull", Ok(Some(("team/app", A::PULL))));
        check_scope(
            "repository:my-app:pull,delete",
            Ok(Some(("my-app", A::PULL))),
        );
        check_scope("repository:my-app:pull,", Ok(Some(("my-app", A::PULL))));
        // Never granted, but not errors.
        check_scope("repository:my-app:*", Ok(None));
        check_scope("repository:my-app:delete", Ok(None));
        check_scope("repository:my-app:", Ok(None));
        check_scope("registry:catalog:*", Ok(None));
        check_scope("repository(plugin):my-app:pull", Ok(None));
        check_scope("unknown:thing:pull", Ok(None));
        // Refused.
        check_scope("repository:My-App:pull", Err("repository"));
        check_scope("repository:localhost:5000/app:pull", Err("repository"));
        check_scope("repository::pull", Err("malformed"));
        check_scope("repository:my-app", Err("malformed"));
        check_scope(":my-app:pull", Err("malformed"));
        check_scope("my-app", Err("malformed"));
    }

    #[test]
    fn scopes_repeat_and_split_on_spaces() {
        let scopes = parse_scopes([
            "repository:a:pull repository:b:push",
            "",
            "registry:catalog:*",
            "repository:c:pull",
        ])
        .expect("parses");
        let names: Vec<&str> = scopes.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let many = vec!["repository:a:pull"; MAX_SCOPES + 1];
        assert_eq!(parse_scopes(many), Err(ScopeError::TooMany));
    }

    /// One repository asked for many times is one scope (and so one audit record).
    #[test]
    fn scopes_of_one_repository_merge() {
        let scopes = parse_scopes([
            "repository:b:pull",
            "repository:a:pull repository:b:push",
            "repository:a:pull",
            "repository:b:pull",
        ])
        .expect("parses");
        let merged: Vec<(&str, Actions)> = scopes
            .iter()
            .map(|s| (s.name.as_str(), s.actions))
            .collect();
        assert_eq!(merged, [("b", Actions::PUSH_PULL), ("a", Actions::PULL)]);
    }

    #[test]
    fn intersection() {
        let scopes = parse_scopes([
            "repository:my-app:pull,push",
            "repository:other-app:pull,push",
            "repository:pull-only:pull,push",
            "repository:my-app:pull",
        ])
        .expect("parses");
        let access = intersect(&scopes, |name| match name.as_str() {
            "my-app" => Actions::PUSH_PULL,
            "pull-only" => Actions::PULL,
            _ => Actions::NONE,
        });
        assert_eq!(
            access,
            vec![
                Access {
                    name: repo("my-app"),
                    actions: Actions::PUSH_PULL
                },
                Access {
                    name: repo("pull-only"),
                    actions: Actions::PULL
                },
            ]
        );
        assert!(intersect(&[], |_| Actions::PUSH_PULL).is_empty());
    }

    fn keys() -> KeySet {
        let next = SigningKey::generate().expect("generate");
        KeySet::new(
            SigningKey::generate().expect("generate"),
            vec![next.cert().clone()],
        )
    }

    fn spec<'a>(access: &'a [Access], now: SystemTime) -> TokenSpec<'a> {
        TokenSpec {
            issuer: "rise",
            service: "rise-registry",
            subject: "alice",
            access,
            now,
            expires_at: now + Duration::from_secs(300),
        }
    }

    #[test]
    fn minted_tokens_have_the_registry_shape() {
        let keys = keys();
        let access = [Access {
            name: repo("my-app"),
            actions: Actions::PUSH_PULL,
        }];
        let now = SystemTime::now();
        let token = mint(&keys, &spec(&access, now)).expect("mint");
        let jwt = token.token.expose_secret();
        let mut parts = jwt.split('.');
        let header = decode_object(parts.next().expect("header"), "header").expect("header");
        let claims = decode_object(parts.next().expect("claims"), "claims").expect("claims");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], keys.current().kid());
        assert_eq!(claims["iss"], "rise");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["aud"], "rise-registry");
        let iat = claims["iat"].as_u64().expect("integer iat");
        assert_eq!(claims["nbf"].as_u64(), Some(iat));
        assert_eq!(claims["exp"].as_u64(), Some(iat + 300));
        assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 32));
        assert_eq!(
            claims["access"],
            serde_json::json!([{"type": "repository", "name": "my-app", "actions": ["pull", "push"]}])
        );
        assert_eq!(
            token.expires_at.duration_since(token.issued_at).ok(),
            Some(Duration::from_secs(300))
        );
    }

    #[test]
    fn expired_caller_gets_no_token() {
        let keys = keys();
        let now = SystemTime::now();
        let mut s = spec(&[], now);
        s.expires_at = now;
        assert!(matches!(mint(&keys, &s), Err(MintError::CallerExpired)));
    }

    /// Build a token by hand from header and claims JSON, with a signature of `sig_len` bytes.
    fn forge(header: Value, claims: Value, sig_len: usize) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(vec![1u8; sig_len])
        )
    }

    #[test]
    fn invariant_check() {
        use serde_json::json;
        let keys = keys();
        let now = 1_700_000_000u64;
        let expect = Expectations {
            issuer: "rise",
            service: "svc",
            keys: &keys,
            now,
        };
        let kid = keys.current().kid().to_owned();
        let next_kid = keys.trusted().nth(1).expect("next").kid().to_owned();
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid});
        let claims = json!({
            "iss": "rise", "sub": "alice", "aud": "svc", "exp": now + 300, "nbf": now, "iat": now,
            "jti": "x", "access": [{"type": "repository", "name": "my-app", "actions": ["pull", "push"]}]
        });
        let with = |path: &str, value: Value| {
            let (mut h, mut c) = (header.clone(), claims.clone());
            let (target, key) = match path.split_once('.') {
                Some(("header", k)) => (&mut h, k),
                Some(("claims", k)) => (&mut c, k),
                _ => panic!("bad path {path}"),
            };
            if value.is_null() {
                target.as_object_mut().expect("object").remove(key);
            } else {
                target[key] = value;
            }
            forge(h, c, 64)
        };

        let cases: Vec<(&str, String, Option<&str>)> = vec![
            ("valid", forge(header.clone(), claims.clone(), 64), None),
            ("next kid", with("header.kid", json!(next_kid)), None),
            ("rs256", with("header.alg", json!("RS256")), None),
            ("no nbf", with("claims.nbf", Value::Null), None),
            ("empty access", with("claims.access", json!([])), None),
            ("hs256", with("header.alg", json!("HS256")), Some("alg")),
            ("none", with("header.alg", json!("none")), Some("alg")),
            ("eddsa", with("header.alg", json!("EdDSA")), Some("alg")),
            ("no kid", with("header.kid", Value::Null), Some("no kid")),
            (
                "unknown kid",
                with("header.kid", json!("AAAA:BBBB")),
                Some("bundle"),
            ),
            ("typ", with("header.typ", json!("at+jwt")), Some("typ")),
            (
                "aud array",
                with("claims.aud", json!(["svc"])),
                Some("single string"),
            ),
            (
                "aud other",
                with("claims.aud", json!("other")),
                Some("service"),
            ),
            (
                "no aud",
                with("claims.aud", Value::Null),
                Some("single string"),
            ),
            ("iss", with("claims.iss", json!("other")), Some("iss")),
            (
                "exp past",
                with("claims.exp", json!(now - 1)),
                Some("not after now"),
            ),
            (
                "exp now",
                with("claims.exp", json!(now)),
                Some("not after now"),
            ),
            (
                "exp string",
                with("claims.exp", json!("1900000000")),
                Some("not an integer"),
            ),
            (
                "exp float",
                with("claims.exp", json!(1.9e9)),
                Some("not an integer"),
            ),
            ("no exp", with("claims.exp", Value::Null), Some("exp")),
            (
                "nbf future",
                with("claims.nbf", json!(now + 100)),
                Some("nbf"),
            ),
            (
                "access missing",
                with("claims.access", Value::Null),
                Some("access"),
            ),
            (
                "access type",
                with(
                    "claims.access",
                    json!([{"type": "registry", "name": "catalog", "actions": ["*"]}]),
                ),
                Some("type"),
            ),
            (
                "access name",
                with(
                    "claims.access",
                    json!([{"type": "repository", "name": "A", "actions": ["pull"]}]),
                ),
                Some("invalid repository"),
            ),
            (
                "access action",
                with(
                    "claims.access",
                    json!([{"type": "repository", "name": "a", "actions": ["*"]}]),
                ),
                Some("action"),
            ),
            (
                "access no actions",
                with(
                    "claims.access",
                    json!([{"type": "repository", "name": "a", "actions": []}]),
                ),
                Some("grants nothing"),
            ),
            (
                "der signature",
                forge(header.clone(), claims.clone(), 71),
                Some("r||s"),
            ),
            ("two parts", "a.b".to_owned(), Some("three parts")),
            ("garbage", "!.!.!".to_owned(), Some("base64url")),
        ];
        for (name, token, expect_err) in cases {
            match (check_invariants(&token, &expect), expect_err) {
                (Ok(()), None) => {}
                (Err(e), Some(fragment)) => {
                    assert!(e.contains(fragment), "{name}: {e:?} lacks {fragment:?}")
                }
                (got, want) => panic!("{name}: got {got:?}, expected error {want:?}"),
            }
        }
    }

    #[test]
    fn tokens_of_keys_outside_the_bundle_fail_the_check() {
        // The signing key is not in the bundle: minting must fail closed.
        let published = keys();
        let rogue = KeySet::new(SigningKey::generate().expect("generate"), Vec::new());
        let now = SystemTime::now();
        let token = mint(&rogue, &spec(&[], now)).expect("self-consistent key set mints");
        let err = check_invariants(
            token.token.expose_secret(),
            &Expectations {
                issuer: "rise",
                service: "rise-registry",
                keys: &published,
                now: unix_secs(now),
            },
        )
        .expect_err("unknown kid");
        assert!(err.contains("bundle"), "{err}");
        assert!(!err.contains(token.token.expose_secret()));
    }
}
