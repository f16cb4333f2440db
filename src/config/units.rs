//! Parsers for the value formats operators type: durations, percents, byte sizes and
//! octal file modes. Each error message says what was wrong and shows a valid example.

use std::time::Duration;

const DURATION_HINT: &str =
    "expected a number and a unit (ms, s, m or h) such as \"250ms\", \"60s\", \"1.5s\", \"5m\" or \"1h\"";
const PERCENT_HINT: &str =
    "expected a percent from 0 to 100 with at most two decimals, such as 10 or 0.5";
const SIZE_HINT: &str =
    "expected a byte count such as 65536 or a string such as \"64KiB\", \"100MiB\" or \"1GiB\"";

/// Parses a duration such as `"250ms"`, `"60s"`, `"1.5s"`, `"5m"` or `"1h"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_nanos: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" if !number.is_empty() => {
            return Err(format!(
                "\"{s}\" has no unit; write \"{number}s\" for seconds or \"{number}ms\" for milliseconds"
            ))
        }
        _ => return Err(format!("\"{s}\" is not a duration; {DURATION_HINT}")),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || (number.contains('.') && frac.is_empty()) || frac.contains('.') {
        return Err(format!("\"{s}\" is not a duration; {DURATION_HINT}"));
    }
    if frac.len() > 9 {
        return Err(format!(
            "\"{s}\" has more than nine decimals; {DURATION_HINT}"
        ));
    }
    let too_long = || format!("\"{s}\" is too long; durations are limited to about 500 years");
    let whole: u128 = whole.parse().map_err(|_| too_long())?;
    let frac_digits: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| too_long())?
    };
    let nanos = whole
        .checked_mul(unit_nanos)
        .and_then(|n| n.checked_add(frac_digits * unit_nanos / 10u128.pow(frac.len() as u32)))
        .ok_or_else(too_long)?;
    let nanos = u64::try_from(nanos).map_err(|_| too_long())?;
    Ok(Duration::from_nanos(nanos))
}

/// Parses a percent with at most two decimals into basis points: `"0.5"` → 50,
/// `"10"` → 1000, `"100"` → 10000. A trailing `%` is allowed.
pub fn parse_percent_bp(s: &str) -> Result<u16, String> {
    let text = s.trim();
    let number = text.strip_suffix('%').unwrap_or(text);
    if number.starts_with('-') {
        return Err(format!("\"{s}\" is negative; {PERCENT_HINT}"));
    }
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let all_digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    let well_formed = !whole.is_empty()
        && all_digits(whole)
        && all_digits(frac)
        && !(number.contains('.') && frac.is_empty());
    if !well_formed {
        return Err(format!("\"{s}\" is not a percent; {PERCENT_HINT}"));
    }
    if frac.len() > 2 {
        return Err(format!(
            "\"{s}\" has more than two decimals; the finest step is 0.01 percent, so write e.g. {whole}.{}",
            &frac[..2]
        ));
    }
    let whole = whole.trim_start_matches('0');
    if whole.len() > 3 {
        return Err(format!("\"{s}\" is above 100; {PERCENT_HINT}"));
    }
    let whole: u32 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .map_err(|_| format!("\"{s}\" is not a percent; {PERCENT_HINT}"))?
    };
    let frac: u32 = format!("{frac:0<2}")
        .parse()
        .map_err(|_| format!("\"{s}\" is not a percent; {PERCENT_HINT}"))?;
    let bp = whole * 100 + frac;
    if bp > 10_000 {
        return Err(format!("\"{s}\" is above 100; {PERCENT_HINT}"));
    }
    u16::try_from(bp).map_err(|_| format!("\"{s}\" is above 100; {PERCENT_HINT}"))
}

/// Parses a byte size written as a string: `"65536"`, `"512B"`, `"64KiB"`, `"100MiB"`, `"1GiB"`.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim_start() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" | "MB" | "GB" | "TB" => {
            return Err(format!(
                "\"{s}\" uses a decimal unit; use binary units (KiB, MiB, GiB, TiB) or a plain byte count"
            ))
        }
        _ => return Err(format!("\"{s}\" is not a size; {SIZE_HINT}")),
    };
    if number.is_empty() {
        return Err(format!("\"{s}\" is not a size; {SIZE_HINT}"));
    }
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("\"{s}\" is too large; {SIZE_HINT}"))
}

/// Parses a Unix permission mode written as octal digits: `"0660"` → 0o660.
pub(crate) fn parse_octal_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let hint = "expected octal digits such as \"0660\" (owner and group read/write)";
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(format!("\"{s}\" is not an octal mode; {hint}"));
    }
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("\"{s}\" is not an octal mode; {hint}"))?;
    if mode > 0o777 {
        return Err(format!(
            "\"{s}\" sets setuid, setgid or sticky bits, which a socket must not have; {hint}"
        ));
    }
    Ok(mode)
}
