//! The signed document and configuration rules of the remote cache.

use super::*;

#[test]
fn precedence_and_off() {
    // Only the pure parts: the env level is exercised by the CLI tests.
    assert!(RemoteCache::from_config(None, CacheKeys::none()).is_none());
    assert!(RemoteCache::from_config(Some("  "), CacheKeys::none()).is_none());
    let c = RemoteCache::from_config(Some("http://h:1/"), CacheKeys::none()).unwrap();
    assert_eq!(c.url(), "http://h:1");
    assert!(!c.can_sign() && !c.can_verify());
}

#[test]
fn signature_binds_key_id_action_key_and_payload() {
    let keys = CacheKeys::none().signing("ci", [7u8; 32]);
    let cache = RemoteCache::from_config(Some("http://127.0.0.1:9"), keys).unwrap().read_only(true);
    let tier = cache.start();
    let doc = tier.inner.sign("k1", b"{\"x\":1}".to_vec()).unwrap();
    assert_eq!(tier.inner.verify("k1", &doc).as_deref(), Some(&b"{\"x\":1}"[..]));
    assert_eq!(tier.inner.verify("k2", &doc), None, "replayed under another action key");
    let mut parsed: serde_json::Value = serde_json::from_slice(&doc).unwrap();
    parsed["payload"] = "{\"x\":2}".into();
    assert_eq!(tier.inner.verify("k1", parsed.to_string().as_bytes()), None, "tampered payload");
    // The same signature under another trusted key's id does not verify.
    let other = CacheKeys::none().signing("ci", [8u8; 32]);
    let reader = RemoteCache::from_config(Some("http://127.0.0.1:9"), other).unwrap().read_only(true).start();
    assert_eq!(reader.inner.verify("k1", &doc), None, "signed by a key this client does not trust");
}
