use super::*;
use crate::duration::SECOND_NANOS;

const HOUR: i64 = 3_600 * SECOND_NANOS;
const DAY: i64 = 24 * HOUR;
/// 2026-01-01T00:00:00Z.
const NOW: UnixNanos = 1_767_225_600 * SECOND_NANOS;

/// A deterministic stand-in for the OS random source (xorshift).
struct Xorshift(u64);

impl RandomSource for Xorshift {
    fn fill(&mut self, buffer: &mut [u8]) -> Result<(), keygen::RandomError> {
        for byte in buffer {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *byte = self.0.to_le_bytes()[0];
        }
        Ok(())
    }
}

fn state() -> State {
    State::parse(
        br#"{"plans": {"pro": {"scopes": ["leads:*"]}, "free": {}},
             "rules": [{"path_prefix": "/healthz", "public": true}]}"#,
    )
    .unwrap()
}

fn new_key(tenant: &str) -> NewKey {
    NewKey {
        tenant: tenant.to_owned(),
        scopes: vec!["leads:read".to_owned(), "leads:write".to_owned()],
        plan: Some("pro".to_owned()),
        env: Some("live".to_owned()),
        name: "n8n Production".to_owned(),
        expiry: Expiry::Never,
        prefix: "sk_live_".to_owned(),
    }
}

fn create(state: &mut State, tenant: &str, random: &mut Xorshift) -> Issued {
    state.create(new_key(tenant), NOW, 25, random).unwrap()
}

fn rotation(grace: i64) -> Rotation {
    Rotation {
        grace,
        prefix: None,
        expiry: None,
    }
}

#[test]
fn create_stores_the_hash_hint_and_creation_time_never_the_key() {
    let mut state = state();
    let issued = create(&mut state, "acme", &mut Xorshift(1));
    let entry = state.key(&issued.id).unwrap();
    assert_eq!(
        entry.sha256,
        KeyHash::of(issued.key.expose().as_bytes()).to_hex()
    );
    assert_eq!(entry.hint.as_deref(), Some(issued.hint.as_str()));
    assert_eq!(entry.created_at.as_deref(), Some("2026-01-01T00:00:00Z"));
    assert!(
        issued.id.starts_with("key_") && issued.id.len() == 12,
        "{}",
        issued.id
    );
    let written = String::from_utf8(state.to_checked_bytes().unwrap()).unwrap();
    assert!(!written.contains(issued.key.expose()), "{written}");
}

#[test]
fn create_is_refused_once_the_tenant_has_the_limit_of_active_keys() {
    let mut state = state();
    let mut random = Xorshift(2);
    for _ in 0..3 {
        state.create(new_key("acme"), NOW, 3, &mut random).unwrap();
    }
    let error = state
        .create(new_key("acme"), NOW, 3, &mut random)
        .unwrap_err();
    assert!(
        matches!(&error, CliError::Refused(_, m) if m.contains("limit of 3")),
        "{error:?}"
    );
    // Another tenant is not affected.
    state
        .create(new_key("globex"), NOW, 3, &mut random)
        .unwrap();
}

#[test]
fn revoked_and_expired_keys_do_not_count_against_the_limit() {
    let mut state = state();
    let mut random = Xorshift(3);
    let first = state.create(new_key("acme"), NOW, 2, &mut random).unwrap();
    let mut expiring = new_key("acme");
    expiring.expiry = Expiry::In(HOUR);
    state.create(expiring, NOW, 2, &mut random).unwrap();
    state.revoke(&first.id).unwrap();
    let later = NOW + 2 * HOUR;
    assert_eq!(state.active_keys("acme", later, None), 0);
    state
        .create(new_key("acme"), later, 2, &mut random)
        .unwrap();
    state
        .create(new_key("acme"), later, 2, &mut random)
        .unwrap();
}

#[test]
fn a_key_is_expired_from_the_instant_expires_at_names() {
    let mut state = state();
    let mut key = new_key("acme");
    key.expiry = Expiry::In(HOUR);
    let issued = state.create(key, NOW, 25, &mut Xorshift(4)).unwrap();
    let entry = state.key(&issued.id).unwrap();
    assert_eq!(entry.status(NOW + HOUR - 1), KeyStatus::Active);
    assert_eq!(entry.status(NOW + HOUR), KeyStatus::Expired);
}

#[test]
fn an_expiry_already_past_is_refused() {
    let mut state = state();
    let mut key = new_key("acme");
    key.expiry = Expiry::At("2025-01-01T00:00:00Z".to_owned(), NOW - DAY);
    let error = state.create(key, NOW, 25, &mut Xorshift(5)).unwrap_err();
    assert!(
        matches!(&error, CliError::Refused(_, m) if m.contains("not in the future")),
        "{error:?}"
    );
    assert!(state.keys.is_empty());
}

#[test]
fn revoke_is_idempotent_and_revoked_beats_expired() {
    let mut state = state();
    let issued = create(&mut state, "acme", &mut Xorshift(6));
    assert_eq!(state.revoke(&issued.id), Ok(true));
    assert_eq!(state.revoke(&issued.id), Ok(false));
    assert_eq!(
        state.key(&issued.id).unwrap().status(NOW),
        KeyStatus::Revoked
    );
}

#[test]
fn rotate_gives_the_old_key_the_grace_and_copies_what_the_key_may_do() {
    let mut state = State::parse(
        r#"{"plans": {"pro": {}}, "keys": [{"id": "key_old", "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
             "tenant": "acme", "scopes": ["leads:read"], "plan": "pro", "env": "live", "name": "CRM sync",
             "hint": "crm_AbC…9Mn0", "rate_limits": {"*": {"requests": 5, "period_seconds": 60}}}]}"#
            .as_bytes(),
    )
    .unwrap();
    let rotated = state
        .rotate("key_old", rotation(DAY), NOW, &mut Xorshift(7))
        .unwrap();
    assert_eq!(rotated.old_expires_at, "2026-01-02T00:00:00Z");
    let old = state.key("key_old").unwrap().clone();
    assert_eq!(old.expires_at.as_deref(), Some("2026-01-02T00:00:00Z"));
    assert_eq!(old.status(NOW + DAY - 1), KeyStatus::Active);
    let new = state.key(&rotated.issued.id).unwrap();
    assert!(rotated.issued.key.expose().starts_with("crm_"));
    assert_eq!(
        (&new.tenant, &new.scopes, &new.plan, &new.env),
        (&old.tenant, &old.scopes, &old.plan, &old.env)
    );
    assert_eq!(new.rest, old.rest, "rate_limits are copied");
    assert_eq!(new.name.as_deref(), Some("CRM sync (rotated)"));
    assert_eq!(new.expires_at, None, "the old key had no expiry");
    assert_ne!(new.sha256, old.sha256);
    assert_eq!(
        old.replaced_by.as_deref(),
        Some(rotated.issued.id.as_str()),
        "the old key does not name its successor"
    );
    assert_eq!(new.replaced_by, None, "the successor inherited replaced_by");
    state.to_checked_bytes().unwrap();
}

#[test]
fn a_key_in_its_rotation_grace_is_not_rotated_again() {
    let mut state = state();
    let mut random = Xorshift(19);
    let issued = create(&mut state, "acme", &mut random);
    let first = state
        .rotate(&issued.id, rotation(DAY), NOW, &mut random)
        .unwrap();
    let before = state.clone();
    let error = state
        .rotate(&issued.id, rotation(DAY), NOW + HOUR, &mut random)
        .unwrap_err();
    let CliError::Refused(_, message) = &error else {
        panic!("a second rotation gave {error:?}, not a refusal")
    };
    assert!(
        message.contains("already rotated") && message.contains(&first.issued.id),
        "the refusal does not name the successor: {message}"
    );
    assert_eq!(state, before, "a refused rotation changed the state");
    state.delete(&first.issued.id).unwrap();
    let error = state
        .rotate(&issued.id, rotation(DAY), NOW + HOUR, &mut random)
        .unwrap_err();
    assert!(
        matches!(&error, CliError::Refused(_, m) if m.contains("was deleted")),
        "rotating a key whose successor was deleted gave {error:?}"
    );
}

#[test]
fn a_state_written_before_replaced_by_existed_still_reads_and_rotates() {
    let mut state = State::parse(
        r#"{"keys": [{"id": "key_old", "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
             "tenant": "acme", "hint": "sk_live_AbC…9Mn0"}]}"#
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(state.key("key_old").unwrap().replaced_by, None);
    state
        .rotate("key_old", rotation(DAY), NOW, &mut Xorshift(20))
        .unwrap();
    let bytes = state.to_checked_bytes().unwrap();
    assert!(
        String::from_utf8_lossy(&bytes).contains("\"replaced_by\""),
        "the rotation was not recorded"
    );
}

#[test]
fn rotate_never_extends_an_earlier_expiry() {
    let mut state = state();
    let mut key = new_key("acme");
    key.expiry = Expiry::In(HOUR);
    let issued = state.create(key, NOW, 25, &mut Xorshift(8)).unwrap();
    let before = state.key(&issued.id).unwrap().expires_at.clone();
    let rotated = state
        .rotate(&issued.id, rotation(DAY), NOW, &mut Xorshift(9))
        .unwrap();
    assert_eq!(Some(rotated.old_expires_at), before);
    assert_eq!(state.key(&issued.id).unwrap().expires_at, before);
}

#[test]
fn rotate_with_no_grace_ends_the_old_key_now() {
    let mut state = state();
    let issued = create(&mut state, "acme", &mut Xorshift(10));
    state
        .rotate(&issued.id, rotation(0), NOW, &mut Xorshift(11))
        .unwrap();
    assert_eq!(
        state.key(&issued.id).unwrap().status(NOW),
        KeyStatus::Expired
    );
}

#[test]
fn rotate_gives_the_new_key_the_old_keys_lifetime_again() {
    let mut state = state();
    let mut key = new_key("acme");
    key.expiry = Expiry::In(90 * DAY);
    let issued = state.create(key, NOW, 25, &mut Xorshift(12)).unwrap();
    let later = NOW + 80 * DAY;
    let rotated = state
        .rotate(&issued.id, rotation(DAY), later, &mut Xorshift(13))
        .unwrap();
    let new = state.key(&rotated.issued.id).unwrap();
    assert_eq!(new.expiry(), Some(later + 90 * DAY));
}

#[test]
fn rotate_refuses_a_revoked_or_expired_key() {
    let mut state = state();
    let issued = create(&mut state, "acme", &mut Xorshift(14));
    state.revoke(&issued.id).unwrap();
    let error = state
        .rotate(&issued.id, rotation(DAY), NOW, &mut Xorshift(15))
        .unwrap_err();
    assert!(
        matches!(&error, CliError::Refused(_, m) if m.contains("is revoked")),
        "{error:?}"
    );
}

#[test]
fn rotating_twice_marks_the_name_once() {
    let mut state = state();
    let mut random = Xorshift(16);
    let first = create(&mut state, "acme", &mut random);
    let second = state
        .rotate(&first.id, rotation(DAY), NOW, &mut random)
        .unwrap();
    let third = state
        .rotate(&second.issued.id, rotation(DAY), NOW, &mut random)
        .unwrap();
    assert_eq!(
        state.key(&third.issued.id).unwrap().name.as_deref(),
        Some("n8n Production (rotated)")
    );
}

#[test]
fn rotate_is_not_held_back_by_the_tenant_limit() {
    let mut state = state();
    let mut random = Xorshift(17);
    let issued = state.create(new_key("acme"), NOW, 1, &mut random).unwrap();
    state
        .rotate(&issued.id, rotation(HOUR), NOW, &mut random)
        .unwrap();
}

#[test]
fn a_prefix_outside_key_prefixes_is_refused_as_unusable() {
    let mut state =
        State::parse(br#"{"plans": {"pro": {}}, "key_prefixes": ["sk_live_"]}"#).unwrap();
    let mut key = new_key("acme");
    key.prefix = "crm_".to_owned();
    let error = state.create(key, NOW, 25, &mut Xorshift(18)).unwrap_err();
    assert!(
        matches!(&error, CliError::Refused(_, m) if m.contains("key_prefixes")),
        "{error:?}"
    );
    create(&mut state, "acme", &mut Xorshift(19));
}

#[test]
fn a_change_the_validator_refuses_names_the_option_and_value_typed() {
    let mut state = state();
    let mut random = Xorshift(20);
    create(&mut state, "acme", &mut random);
    let mut key = new_key("acme");
    key.plan = Some("gold".to_owned());
    state.create(key, NOW, 25, &mut random).unwrap();
    let error = state.to_checked_bytes().unwrap_err();
    assert_eq!(
        error,
        CliError::Refused(
            Code::InvalidChange,
            "--plan gold: no such plan (plans: free, pro)".to_owned()
        ),
        "the refusal names keys[1] instead of what was typed"
    );
    let mut key = new_key("acme");
    key.plan = None;
    key.scopes = vec!["leads:read".to_owned(), "le*ds".to_owned()];
    let mut state = self::state();
    state.create(key, NOW, 25, &mut random).unwrap();
    let error = state.to_checked_bytes().unwrap_err();
    assert!(
        matches!(&error, CliError::Refused(Code::InvalidChange, m) if m.starts_with("--scopes le*ds: ")),
        "a bad scope is not named as typed: {error:?}"
    );
}

#[test]
fn a_refusal_about_a_key_no_option_set_names_the_field() {
    let mut state = state();
    let issued = create(&mut state, "acme", &mut Xorshift(21));
    state.typed_key = None;
    if let Some(key) = state.keys.first_mut() {
        key.plan = Some("gold".to_owned());
    }
    let error = state.to_checked_bytes().unwrap_err();
    assert!(
        matches!(&error, CliError::Refused(_, m) if m.contains("keys[0].plan: unknown plan \"gold\"")),
        "{} : {error:?}",
        issued.id
    );
}

#[test]
fn an_invalid_document_is_refused_on_reading_with_the_field_named() {
    let error = State::parse(
        br#"{"keys": [{"id": "k", "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "tenant": "t", "plan": "gold"}]}"#,
    )
    .unwrap_err();
    assert_eq!(error, "keys[0].plan: unknown plan \"gold\"");
    assert!(State::parse(b"  ").unwrap_err().contains("empty"));
}

#[test]
fn fields_the_tool_does_not_manage_survive_a_round_trip() {
    let text = br#"{"keys": [{"id": "k", "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "tenant": "t",
                    "rate_limits": {"*": {"requests": 1, "period_seconds": 1}}}],
                    "realm": "crm", "forward_credential": true, "schemes": ["x-api-key"]}"#;
    let state = State::parse(text).unwrap();
    let again = State::parse(&state.to_checked_bytes().unwrap()).unwrap();
    assert_eq!(again, state);
    let original: Value = serde_json::from_slice(text).unwrap();
    let written: Value = serde_json::from_slice(&state.to_checked_bytes().unwrap()).unwrap();
    assert_eq!(written["realm"], original["realm"]);
    assert_eq!(
        written["keys"][0]["rate_limits"],
        original["keys"][0]["rate_limits"]
    );
}

#[test]
fn update_changes_only_what_it_is_given() {
    let mut state = state();
    let issued = create(&mut state, "acme", &mut Xorshift(21));
    let before = state.key(&issued.id).unwrap().clone();
    let update = KeyUpdate {
        scopes: Some(vec!["leads:read".to_owned()]),
        plan: Some(Some("free".to_owned())),
        ..KeyUpdate::default()
    };
    state.update(&issued.id, update, NOW, 25).unwrap();
    let after = state.key(&issued.id).unwrap();
    assert_eq!(after.scopes, ["leads:read"]);
    assert_eq!(after.plan.as_deref(), Some("free"));
    assert_eq!(
        (&after.name, &after.expires_at),
        (&before.name, &before.expires_at)
    );
}

#[test]
fn an_update_that_makes_an_expired_key_active_counts_against_the_limit() {
    let mut state = state();
    let mut random = Xorshift(22);
    let mut expiring = new_key("acme");
    expiring.expiry = Expiry::In(HOUR);
    let old = state.create(expiring, NOW, 1, &mut random).unwrap();
    let later = NOW + 2 * HOUR;
    state
        .create(new_key("acme"), later, 1, &mut random)
        .unwrap();
    let revive = KeyUpdate {
        expiry: Some(Expiry::Never),
        ..KeyUpdate::default()
    };
    let error = state.update(&old.id, revive, later, 1).unwrap_err();
    assert!(
        matches!(&error, CliError::Refused(_, m) if m.contains("limit of 1")),
        "{error:?}"
    );
}

#[test]
fn delete_removes_the_key_and_unknown_ids_are_refused() {
    let mut state = state();
    let issued = create(&mut state, "acme", &mut Xorshift(23));
    state.delete(&issued.id).unwrap();
    assert!(state.keys.is_empty());
    for error in [
        state.delete(&issued.id).unwrap_err(),
        state.revoke("key_nope").unwrap_err(),
    ] {
        assert!(
            matches!(&error, CliError::Refused(_, m) if m.contains("no key with id")),
            "{error:?}"
        );
    }
}

#[test]
fn rows_carry_no_key_material_and_filter_by_tenant() {
    let mut state = state();
    let mut random = Xorshift(24);
    create(&mut state, "acme", &mut random);
    create(&mut state, "globex", &mut random);
    let rows = state.rows(Some("globex"), NOW);
    assert_eq!(rows.len(), 1);
    let json = serde_json::to_string(&rows).unwrap();
    assert!(!json.contains("sha256"), "{json}");
    assert!(json.contains("\"state\":\"active\""), "{json}");
}
