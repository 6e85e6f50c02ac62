//! Kubernetes quantities, as the injector reads a pod's resource
//! annotations.

use outrigger_injector::quantity::parse;

/// Never panics; an error names the value; an amount written back in
/// nanos (`<n>n`) reads as the same amount; a leading `+` or `0` changes
/// nothing.
pub fn quantity(data: &[u8]) {
    let Some(v) = crate::text(data) else { return };
    match parse(v) {
        Ok(amount) => {
            assert_eq!(parse(&format!("{}n", amount.nanos())), Ok(amount), "{v:?}");
            if !v.starts_with('+') {
                assert_eq!(parse(&format!("+{v}")), Ok(amount), "+{v:?}");
                assert_eq!(parse(&format!("0{v}")), Ok(amount), "0{v:?}");
            }
        }
        Err(e) => assert!(e.contains(&format!("{v:?}")), "{e} does not name {v:?}"),
    }
}
