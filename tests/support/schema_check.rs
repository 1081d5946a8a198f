//! A JSON-schema check for the features the constrained-decoding tests use (written here, to
//! hold llguidance's outputs to the schema independently of llguidance): `type` (one or a
//! list), `enum`, `const`, `properties`, `required`, `additionalProperties` (bool or schema),
//! `minProperties`/`maxProperties`, `items`, `prefixItems`, `minItems`/`maxItems`,
//! `uniqueItems`, `minimum`/`maximum`/`exclusiveMinimum`/`exclusiveMaximum`, `multipleOf`,
//! `minLength`/`maxLength` (in characters), `pattern` (unanchored, as JSON Schema says),
//! `anyOf`/`oneOf`/`allOf`, and `$ref` into `#/$defs/` or `#/definitions/`. A keyword it
//! does not know fails the check, so a schema cannot pass by being only partly checked.
#![allow(dead_code)]

use serde_json::Value;

const KNOWN: &[&str] = &[
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "minProperties",
    "maxProperties",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "$defs",
    "definitions",
    "title",
    "description",
    "$schema",
];

/// Checks `v` against `schema` (whose `$ref`s point into `root`); the error says where.
pub fn check(v: &Value, schema: &Value, root: &Value) -> Result<(), String> {
    check_at(v, schema, root, "$")
}

fn is_type(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

fn check_at(v: &Value, schema: &Value, root: &Value, at: &str) -> Result<(), String> {
    let s = match schema {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return Err(format!("{at}: schema false")),
        Value::Object(s) => s,
        _ => return Err(format!("{at}: bad schema {schema}")),
    };
    let fail = |why: String| Err(format!("{at}: {why} (value {v})"));
    for k in s.keys() {
        if !KNOWN.contains(&k.as_str()) {
            return Err(format!("{at}: the check does not know keyword {k}"));
        }
    }
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let path = r
            .strip_prefix("#/")
            .ok_or(format!("{at}: unsupported $ref {r}"))?;
        let mut target = root;
        for part in path.split('/') {
            target = target.get(part).ok_or(format!("{at}: dangling $ref {r}"))?;
        }
        check_at(v, target, root, at)?;
    }
    match s.get("type") {
        Some(Value::String(t)) if !is_type(v, t) => return fail(format!("not {t}")),
        Some(Value::Array(ts)) if !ts.iter().any(|t| is_type(v, t.as_str().unwrap_or(""))) => {
            return fail(format!("none of {ts:?}"))
        }
        _ => {}
    }
    if let Some(Value::Array(e)) = s.get("enum") {
        if !e.contains(v) {
            return fail("not in enum".into());
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            return fail(format!("not const {c}"));
        }
    }
    if let Some(x) = v.as_f64() {
        let num = |k: &str| s.get(k).and_then(Value::as_f64);
        if num("minimum").is_some_and(|m| x < m) || num("maximum").is_some_and(|m| x > m) {
            return fail("out of [minimum, maximum]".into());
        }
        if num("exclusiveMinimum").is_some_and(|m| x <= m)
            || num("exclusiveMaximum").is_some_and(|m| x >= m)
        {
            return fail("out of the exclusive bounds".into());
        }
        if let Some(m) = num("multipleOf") {
            let q = x / m;
            if (q - q.round()).abs() > 1e-9 {
                return fail(format!("not a multiple of {m}"));
            }
        }
    }
    if let Some(text) = v.as_str() {
        let n = text.chars().count() as u64;
        if s.get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| n < m)
            || s.get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
        {
            return fail(format!("length {n} out of bounds"));
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str) {
            let re = regex::Regex::new(p).map_err(|e| format!("{at}: bad pattern: {e}"))?;
            if !re.is_match(text) {
                return fail(format!("does not match {p}"));
            }
        }
    }
    if let Some(a) = v.as_array() {
        let n = a.len() as u64;
        if s.get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| n < m)
            || s.get("maxItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
        {
            return fail(format!("{n} items out of bounds"));
        }
        if s.get("uniqueItems") == Some(&Value::Bool(true)) {
            for (i, x) in a.iter().enumerate() {
                if a[..i].contains(x) {
                    return fail(format!("item {i} repeats"));
                }
            }
        }
        let prefix = s.get("prefixItems").and_then(Value::as_array);
        let np = prefix.map_or(0, |p| p.len());
        for (i, x) in a.iter().enumerate() {
            let at = format!("{at}[{i}]");
            if let Some(p) = prefix.filter(|_| i < np) {
                check_at(x, &p[i], root, &at)?;
            } else if let Some(items) = s.get("items") {
                check_at(x, items, root, &at)?;
            }
        }
    }
    if let Some(o) = v.as_object() {
        let n = o.len() as u64;
        if s.get("minProperties")
            .and_then(Value::as_u64)
            .is_some_and(|m| n < m)
            || s.get("maxProperties")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
        {
            return fail(format!("{n} properties out of bounds"));
        }
        if let Some(Value::Array(req)) = s.get("required") {
            for r in req {
                if !o.contains_key(r.as_str().unwrap_or("")) {
                    return fail(format!("missing required {r}"));
                }
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, x) in o {
            let at = format!("{at}.{k}");
            match props.and_then(|p| p.get(k)) {
                Some(ps) => check_at(x, ps, root, &at)?,
                None => {
                    if let Some(extra) = s.get("additionalProperties") {
                        check_at(x, extra, root, &at)?;
                    }
                }
            }
        }
    }
    if let Some(Value::Array(all)) = s.get("allOf") {
        for sub in all {
            check_at(v, sub, root, at)?;
        }
    }
    if let Some(Value::Array(any)) = s.get("anyOf") {
        if !any.iter().any(|sub| check_at(v, sub, root, at).is_ok()) {
            return fail("matches no anyOf branch".into());
        }
    }
    if let Some(Value::Array(one)) = s.get("oneOf") {
        let n = one
            .iter()
            .filter(|sub| check_at(v, sub, root, at).is_ok())
            .count();
        if n != 1 {
            return fail(format!("matches {n} oneOf branches"));
        }
    }
    Ok(())
}
