//! Pure domain logic, no I/O: what a valid resource, credential, step or plan is, templates,
//! the plan graph and its checks. Everything here is unit-tested without a database.

pub mod credentials;
pub mod duration;
pub mod plans;
pub mod resources;
pub mod steps;
pub mod templates;
pub mod validation;

use serde_json::Value;

/// Applies an RFC 7396 JSON merge patch to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let target_map = target.as_object_mut().expect("made an object above");
    for (key, value) in patch_map {
        if value.is_null() {
            target_map.remove(key);
        } else {
            merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}
