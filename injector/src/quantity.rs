//! A Kubernetes resource quantity (`100m`, `1.5`, `64Mi`, `1e3`): checked,
//! and read as an exact amount so that a request can be compared with its
//! limit the way the API server does.

/// An amount in billionths of the unit (nano-cores, nano-bytes): exact for
/// every suffix Kubernetes has, from `n` to `Ei`. Finer fractions are
/// rounded up, as the API server rounds a quantity's precision up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount(u128);

impl Amount {
    /// The amount in billionths of the unit: `1` is 1_000_000_000, `100m`
    /// is 100_000_000. Written back as `<nanos>n`, it reads as the same.
    pub fn nanos(self) -> u128 {
        self.0
    }
}

/// Reads a quantity; the message says what is wrong with it.
pub fn parse(v: &str) -> Result<Amount, String> {
    let bad = || format!("{v:?} is not a Kubernetes quantity (such as 100m or 64Mi)");
    // A plus sign is allowed; a minus is not (no resource is negative).
    let unsigned = v.strip_prefix('+').unwrap_or(v);
    let digits_end = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(digits_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(bad());
    }
    let (ten, two): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        // An exponent: e3, E-2.
        _ => {
            let exp = suffix.strip_prefix(['e', 'E']).ok_or_else(bad)?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            (exp.parse().map_err(|_| bad())?, 0)
        }
    };
    let too_large = || format!("{v:?} is too large a quantity");
    // Trailing zeros of the fraction change nothing.
    let fraction = fraction.trim_end_matches('0');
    let mantissa: u128 = format!("{whole}{fraction}")
        .trim_start_matches('0')
        .parse()
        .or_else(|e: std::num::ParseIntError| match e.kind() {
            std::num::IntErrorKind::Empty => Ok(0),
            _ => Err(too_large()),
        })?;
    if mantissa == 0 {
        return Ok(Amount(0));
    }
    let scaled = mantissa.checked_mul(1u128 << two).ok_or_else(too_large)?;
    let ten = i64::from(ten) + 9 - fraction.len() as i64;
    let amount = if ten >= 0 {
        u32::try_from(ten)
            .ok()
            .and_then(|t| 10u128.checked_pow(t))
            .and_then(|p| scaled.checked_mul(p))
            .ok_or_else(too_large)?
    } else {
        match u32::try_from(-ten).ok().and_then(|t| 10u128.checked_pow(t)) {
            Some(p) => scaled.div_ceil(p),
            // Smaller than any power of ten we can hold: rounds up to one
            // nano, or stays nothing.
            None => u128::from(scaled > 0),
        }
    };
    Ok(Amount(amount))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nano(v: &str) -> u128 {
        parse(v).unwrap().0
    }

    #[test]
    fn quantities_follow_kubernetes() {
        for ok in [
            "1",
            "100m",
            "0.5",
            "1.5Gi",
            "64Mi",
            "1e3",
            "2E-2",
            "128974848",
            ".5",
            "5.",
            "0",
            "+1",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", ".", "m", "1.2.3", "64MB", "1e", "-1", "1 Gi", "e3", "1e+", "1Mi ", "Mi",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn amounts_are_exact() {
        assert_eq!(nano("1"), 1_000_000_000);
        assert_eq!(nano("100m"), 100_000_000);
        assert_eq!(nano("1n"), 1);
        assert_eq!(nano("64Mi"), (64u128 << 20) * 1_000_000_000);
        assert_eq!(parse("0.1").unwrap(), parse("100m").unwrap());
        assert_eq!(parse("1Gi").unwrap(), parse("1024Mi").unwrap());
        assert_eq!(parse("1e3").unwrap(), parse("1k").unwrap());
        assert_eq!(parse("2E-2").unwrap(), parse("20m").unwrap());
        assert_eq!(parse("1.5Gi").unwrap(), parse("1536Mi").unwrap());
        assert_eq!(parse("007").unwrap(), parse("7").unwrap());
        // Below a nano rounds up; nothing stays nothing.
        assert_eq!(nano("0.1n"), 1);
        assert_eq!(nano("1e-30"), 1);
        assert_eq!(nano("0e-30"), 0);
        assert!(parse("1M").unwrap() < parse("1Mi").unwrap());
        assert!(parse("129Mi").unwrap() > parse("128Mi").unwrap());
        assert!(parse("999m").unwrap() < parse("1").unwrap());
    }

    #[test]
    fn too_large_is_named() {
        for v in ["1e40", "99999999999999999999999999999999999999999", "1e30"] {
            assert!(parse(v).unwrap_err().contains("too large"), "{v}");
        }
        assert!(parse("16Ei").is_ok());
        // Zero, and zeros that only pad a fraction, are never too large.
        assert_eq!(nano("0e99"), 0);
        assert_eq!(
            parse(&format!("1.{}", "0".repeat(60))).unwrap(),
            parse("1").unwrap()
        );
    }
}
