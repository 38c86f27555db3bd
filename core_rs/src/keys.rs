//! API keys (docs/data-plane.md, step 2): the table a request's key is
//! checked against. A key reads `mr_<id>_<secret>`; only the SHA-256 of the
//! whole key is kept. The id finds the key's record without a scan, then the
//! hashes are compared in constant time; a key of an unknown id is hashed and
//! compared all the same, so a miss costs what a hit does and timing tells
//! nothing of which ids exist.

use std::collections::HashMap;

use ring::digest;

/// What a key may do: its role's permissions, fewer when it is scoped to a
/// workspace. The one table of them: `auth.py` reads it from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Operator,
    Agent,
    Viewer,
}

/// An act the API guards (each route names the one it needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Look at models, rules, health, config.
    Read,
    /// Change a model's status or health.
    Operate,
    /// Write models, endpoints, rules, agent preferences; import and export.
    Configure,
    /// Write the config of the key's own workspace.
    ConfigureWorkspace,
    /// Create, list and revoke API keys.
    ManageKeys,
    /// Ask for routing decisions and model calls.
    Route,
    /// Read the audit trail of admin writes.
    Audit,
}

impl Permission {
    pub const ALL: [Permission; 7] = [
        Permission::Read,
        Permission::Operate,
        Permission::Configure,
        Permission::ConfigureWorkspace,
        Permission::ManageKeys,
        Permission::Route,
        Permission::Audit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Operate => "operate",
            Permission::Configure => "configure",
            Permission::ConfigureWorkspace => "configure_workspace",
            Permission::ManageKeys => "manage_keys",
            Permission::Route => "route",
            Permission::Audit => "audit",
        }
    }

    /// What a key scoped to one workspace may still do: these act inside one.
    pub fn within_a_workspace(self) -> bool {
        matches!(
            self,
            Permission::Read | Permission::Route | Permission::ConfigureWorkspace
        )
    }
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Agent, Role::Viewer];

    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::Operator => matches!(permission, Read | Operate | Route),
            Role::Agent => matches!(permission, Read | Route),
            Role::Viewer => permission == Read,
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        Some(match name {
            "admin" => Role::Admin,
            "operator" => Role::Operator,
            "agent" => Role::Agent,
            "viewer" => Role::Viewer,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Agent => "agent",
            Role::Viewer => "viewer",
        }
    }
}

/// The id of the admin key the service is started with
/// (`MODEL_ROUTER_ADMIN_KEY`), which lives in no store.
pub const BOOTSTRAP_KEY_ID: &str = "bootstrap-admin";

/// Who a key is.
#[derive(Debug, PartialEq, Eq)]
pub struct Principal<'a> {
    pub key_id: &'a str,
    pub role: Role,
    /// A key scoped to one workspace acts only inside it.
    pub workspace_id: Option<&'a str>,
}

/// A stored key, as the store keeps it.
pub struct KeyRecord {
    pub id: String,
    pub role: Role,
    /// The SHA-256 of the whole key, in lowercase hex.
    pub secret_hash: String,
    pub workspace_id: Option<String>,
}

struct Key {
    hash: [u8; 32],
    role: Role,
    workspace_id: Option<String>,
}

/// The keys a worker accepts: the stored ones and the bootstrap admin key.
#[derive(Default)]
pub struct Keys {
    bootstrap: Option<[u8; 32]>,
    by_id: HashMap<String, Key>,
}

/// The SHA-256 of a whole key, as it is stored.
pub fn hash(key: &str) -> [u8; 32] {
    digest::digest(&digest::SHA256, key.as_bytes())
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

pub fn hash_hex(key: &str) -> String {
    hash(key).iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// Equal, in time that depends on neither's contents.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

/// The id in a key of our form, `mr_<id>_<secret>`.
fn key_id_of(key: &str) -> Option<&str> {
    let mut parts = key.splitn(3, '_');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("mr"), Some(id), Some(_)) if !id.is_empty() => Some(id),
        _ => None,
    }
}

impl Keys {
    /// A stored hash that is not SHA-256 hex (a damaged record) matches no
    /// key; the other keys are unaffected.
    pub fn new(bootstrap_hash: Option<&str>, records: impl IntoIterator<Item = KeyRecord>) -> Keys {
        let by_id = records
            .into_iter()
            .filter_map(|r| {
                let key = Key {
                    hash: from_hex(&r.secret_hash)?,
                    role: r.role,
                    workspace_id: r.workspace_id,
                };
                Some((r.id, key))
            })
            .collect();
        Keys {
            bootstrap: bootstrap_hash.and_then(from_hex),
            by_id,
        }
    }

    /// Who `key` is, or None for a key that is not one of ours (or revoked).
    pub fn verify<'a>(&'a self, key: &str) -> Option<Principal<'a>> {
        let presented = hash(key);
        if let Some(bootstrap) = &self.bootstrap {
            if same(&presented, bootstrap) {
                return Some(Principal {
                    key_id: BOOTSTRAP_KEY_ID,
                    role: Role::Admin,
                    workspace_id: None,
                });
            }
        }
        let (id, record) = key_id_of(key).and_then(|id| self.by_id.get_key_value(id))?;
        same(&presented, &record.hash).then_some(Principal {
            key_id: id,
            role: record.role,
            workspace_id: record.workspace_id.as_deref(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "mr_a1b2c3_secret-part_with_underscores";

    fn record(id: &str, key: &str, role: Role, workspace: Option<&str>) -> KeyRecord {
        KeyRecord {
            id: id.into(),
            role,
            secret_hash: hash_hex(key),
            workspace_id: workspace.map(Into::into),
        }
    }

    #[test]
    fn hashes_as_the_store_keeps_them() {
        // `printf %s abc | sha256sum`
        assert_eq!(
            hash_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_stored_key_is_its_principal_and_nothing_else_is() {
        let keys = Keys::new(None, [record("a1b2c3", KEY, Role::Agent, Some("ws-1"))]);
        assert_eq!(
            keys.verify(KEY),
            Some(Principal {
                key_id: "a1b2c3",
                role: Role::Agent,
                workspace_id: Some("ws-1")
            })
        );
        for other in [
            "mr_a1b2c3_secret-part_with_underscoreS", // the secret differs
            "mr_ffffff_secret-part_with_underscores", // an unknown id
            "mr__x",
            "mr_a1b2c3",
            "a1b2c3",
            "",
        ] {
            assert_eq!(keys.verify(other), None, "{other}");
        }
    }

    #[test]
    fn the_bootstrap_key_is_an_admin_of_no_workspace() {
        let admin = "any-form-at-all";
        let keys = Keys::new(Some(&hash_hex(admin)), []);
        let principal = keys.verify(admin).unwrap();
        assert_eq!(principal.key_id, BOOTSTRAP_KEY_ID);
        assert_eq!(
            (principal.role, principal.workspace_id),
            (Role::Admin, None)
        );
        assert_eq!(Keys::new(None, []).verify(admin), None);
    }

    #[test]
    fn a_damaged_record_matches_nothing_and_spoils_no_other() {
        let mut damaged = record("bad", "mr_bad_x", Role::Admin, None);
        damaged.secret_hash = "not hex".into();
        let keys = Keys::new(None, [damaged, record("a1b2c3", KEY, Role::Viewer, None)]);
        assert_eq!(keys.verify("mr_bad_x"), None);
        assert_eq!(keys.verify(KEY).map(|p| p.role), Some(Role::Viewer));
    }

    #[test]
    fn each_role_allows_what_the_api_reference_says() {
        let allowed = |role: Role| -> Vec<&str> {
            Permission::ALL
                .iter()
                .filter(|p| role.allows(**p))
                .map(|p| p.name())
                .collect()
        };
        assert_eq!(allowed(Role::Admin).len(), Permission::ALL.len());
        assert_eq!(allowed(Role::Operator), ["read", "operate", "route"]);
        assert_eq!(allowed(Role::Agent), ["read", "route"]);
        assert_eq!(allowed(Role::Viewer), ["read"]);
        let scoped: Vec<&str> = Permission::ALL
            .iter()
            .filter(|p| p.within_a_workspace())
            .map(|p| p.name())
            .collect();
        assert_eq!(scoped, ["read", "configure_workspace", "route"]);
    }

    #[test]
    fn roles_read_as_they_are_named() {
        for role in [Role::Admin, Role::Operator, Role::Agent, Role::Viewer] {
            assert_eq!(Role::parse(role.name()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
