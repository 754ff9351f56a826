//! Exact arithmetic for the agent: a small expression parser over big rationals, so
//! `0.1 + 0.2` is `0.3` and `2^100` is every digit, with no code execution anywhere.
//!
//! Grammar: `+ - * / % ^` (also `**`, `×`, `÷`, `−`), parentheses, unary signs, decimal and
//! scientific numbers, and the functions `abs floor ceil round sqrt`. `sqrt` is exact for
//! perfect squares and otherwise approximate (the answer says so). Sizes are bounded so a
//! hostile expression cannot eat the machine.

use num_bigint::BigInt;
use num_integer::Integer;
use num_rational::BigRational;
use num_traits::{One, Signed, ToPrimitive, Zero};
use serde_json::{Value, json};

use crate::{BoxFuture, Tool, ToolContext, ToolError, ToolOutput};

/// Largest exponent magnitude accepted by `^`.
const MAX_EXPONENT: u64 = 10_000;
/// Largest numerator or denominator, in bits, of any intermediate value.
const MAX_BITS: u64 = 100_000;
const MAX_LEN: usize = 2_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Evaluated {
    pub value: BigRational,
    /// A function without an exact answer (sqrt of a non-square) was used.
    pub approximate: bool,
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    approximate: bool,
}

fn err(msg: impl Into<String>) -> ToolError {
    ToolError::InvalidArguments(msg.into())
}

fn checked(v: BigRational) -> Result<BigRational, ToolError> {
    if v.numer().bits() > MAX_BITS || v.denom().bits() > MAX_BITS {
        return Err(err("the number grew too large (over 100,000 bits)"));
    }
    Ok(v)
}

impl Parser<'_> {
    fn skip(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Result<BigRational, ToolError> {
        let mut v = self.term()?;
        loop {
            if self.eat(b'+') {
                v = checked(v + self.term()?)?;
            } else if self.eat(b'-') {
                v = checked(v - self.term()?)?;
            } else {
                return Ok(v);
            }
        }
    }

    fn term(&mut self) -> Result<BigRational, ToolError> {
        let mut v = self.power()?;
        loop {
            if self.peek() == Some(b'*') && self.s.get(self.i + 1) != Some(&b'*') {
                self.i += 1;
                v = checked(v * self.power()?)?;
            } else if self.eat(b'/') {
                let d = self.power()?;
                if d.is_zero() {
                    return Err(err("division by zero"));
                }
                v = checked(v / d)?;
            } else if self.eat(b'%') {
                let d = self.power()?;
                if d.is_zero() {
                    return Err(err("modulo by zero"));
                }
                // Floored modulo, like Python: the result takes the divisor's sign.
                let q = (&v / &d).floor();
                v = checked(v - d * q)?;
            } else {
                return Ok(v);
            }
        }
    }

    fn power(&mut self) -> Result<BigRational, ToolError> {
        let base = self.unary()?;
        let is_pow = if self.peek() == Some(b'^') {
            self.i += 1;
            true
        } else if self.peek() == Some(b'*') && self.s.get(self.i + 1) == Some(&b'*') {
            self.i += 2;
            true
        } else {
            false
        };
        if !is_pow {
            return Ok(base);
        }
        // Right-associative: 2^3^2 is 2^9.
        let exp = self.power()?;
        if !exp.is_integer() {
            return Err(err(
                "only whole-number exponents are exact; use sqrt for roots",
            ));
        }
        let e = exp
            .to_integer()
            .to_i64()
            .filter(|e| e.unsigned_abs() <= MAX_EXPONENT)
            .ok_or_else(|| err(format!("exponents are limited to ±{MAX_EXPONENT}")))?;
        if base.is_zero() && e < 0 {
            return Err(err("division by zero (0 to a negative power)"));
        }
        let bits = base.numer().bits().max(base.denom().bits());
        if bits.saturating_mul(e.unsigned_abs()) > MAX_BITS {
            return Err(err("the number grew too large (over 100,000 bits)"));
        }
        Ok(num_traits::pow::Pow::pow(base, e as i32))
    }

    fn unary(&mut self) -> Result<BigRational, ToolError> {
        if self.eat(b'-') {
            // -2^2 is -(2^2), as in mathematics and Python.
            return Ok(-self.power()?);
        }
        if self.eat(b'+') {
            return self.power();
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<BigRational, ToolError> {
        match self.peek() {
            Some(b'(') => {
                self.i += 1;
                let v = self.expr()?;
                if !self.eat(b')') {
                    return Err(err(format!("missing ')' at position {}", self.i)));
                }
                Ok(v)
            }
            Some(c) if c.is_ascii_digit() || c == b'.' => self.number(),
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i].is_ascii_alphanumeric() {
                    self.i += 1;
                }
                let name = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                let name = name.to_ascii_lowercase();
                if !self.eat(b'(') {
                    return Err(err(format!(
                        "unknown name {name:?}: only numbers, operators and abs/floor/ceil/round/sqrt(...)"
                    )));
                }
                let arg = self.expr()?;
                if !self.eat(b')') {
                    return Err(err(format!("missing ')' after {name}(...")));
                }
                self.function(&name, arg)
            }
            Some(c) => Err(err(format!(
                "unexpected {:?} at position {}",
                c as char, self.i
            ))),
            None => Err(err("the expression ends too early")),
        }
    }

    fn function(&mut self, name: &str, x: BigRational) -> Result<BigRational, ToolError> {
        Ok(match name {
            "abs" => x.abs(),
            "floor" => x.floor(),
            "ceil" => x.ceil(),
            // Half away from zero.
            "round" => x.round(),
            "sqrt" => {
                if x.is_negative() {
                    return Err(err("sqrt of a negative number"));
                }
                let (n, d) = (x.numer().sqrt(), x.denom().sqrt());
                if &(&n * &n) == x.numer() && &(&d * &d) == x.denom() {
                    BigRational::new(n, d)
                } else {
                    self.approximate = true;
                    let f = x.to_f64().unwrap_or(f64::NAN).sqrt();
                    BigRational::from_float(f).ok_or_else(|| err("sqrt out of range"))?
                }
            }
            other => return Err(err(format!("unknown function {other:?}"))),
        })
    }

    fn number(&mut self) -> Result<BigRational, ToolError> {
        let start = self.i;
        let digits = |p: &mut Self| {
            let s = p.i;
            while p.i < p.s.len() && (p.s[p.i].is_ascii_digit() || p.s[p.i] == b'_') {
                p.i += 1;
            }
            p.i - s
        };
        let int_len = digits(self);
        let mut frac = String::new();
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            let fs = self.i;
            digits(self);
            frac = String::from_utf8_lossy(&self.s[fs..self.i]).replace('_', "");
        }
        if int_len == 0 && frac.is_empty() {
            return Err(err(format!("a lone '.' at position {start}")));
        }
        let int = String::from_utf8_lossy(&self.s[start..start + int_len]).replace('_', "");
        let mut exp: i64 = 0;
        if matches!(self.s.get(self.i), Some(b'e' | b'E'))
            && self
                .s
                .get(self.i + 1)
                .is_some_and(|c| c.is_ascii_digit() || *c == b'-' || *c == b'+')
        {
            self.i += 1;
            let es = self.i;
            if matches!(self.s.get(self.i), Some(b'-' | b'+')) {
                self.i += 1;
            }
            digits(self);
            exp = std::str::from_utf8(&self.s[es..self.i])
                .ok()
                .and_then(|t| t.parse().ok())
                .filter(|e: &i64| e.unsigned_abs() <= MAX_EXPONENT)
                .ok_or_else(|| err("bad exponent in a number"))?;
        }
        let mantissa: BigInt = format!("{}{frac}", if int.is_empty() { "0" } else { &int })
            .parse()
            .map_err(|_| err("bad number"))?;
        let ten = BigInt::from(10);
        let scale = exp - frac.len() as i64;
        let v = if scale >= 0 {
            BigRational::from_integer(mantissa * num_traits::pow(ten, scale as usize))
        } else {
            BigRational::new(mantissa, num_traits::pow(ten, (-scale) as usize))
        };
        checked(v)
    }
}

impl std::fmt::Display for Evaluated {
    /// Exact values in full; approximate ones as the nearest double, marked `≈`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.approximate {
            match self.value.to_f64() {
                Some(x) => write!(f, "≈ {x}"),
                None => write!(f, "≈ {}", format_value(&self.value)),
            }
        } else {
            f.write_str(&format_value(&self.value))
        }
    }
}

/// Evaluates `expr` exactly.
pub fn evaluate(expr: &str) -> Result<Evaluated, ToolError> {
    if expr.len() > MAX_LEN {
        return Err(err(format!(
            "expressions are limited to {MAX_LEN} characters"
        )));
    }
    let normalised = expr
        .replace(['×', '·'], "*")
        .replace('÷', "/")
        .replace(['−', '–'], "-")
        .replace(',', "");
    let mut p = Parser {
        s: normalised.as_bytes(),
        i: 0,
        approximate: false,
    };
    if p.peek().is_none() {
        return Err(err("the expression is empty"));
    }
    let value = p.expr()?;
    if let Some(c) = p.peek() {
        return Err(err(format!(
            "unexpected {:?} at position {}",
            c as char, p.i
        )));
    }
    Ok(Evaluated {
        value,
        approximate: p.approximate,
    })
}

/// An integer, an exact decimal when the fraction terminates (denominator 2^a·5^b), else
/// `p/q ≈ decimal`.
pub fn format_value(v: &BigRational) -> String {
    if v.is_integer() {
        return v.numer().to_string();
    }
    let mut d = v.denom().clone();
    let (two, five) = (BigInt::from(2), BigInt::from(5));
    let mut digits = 0usize;
    let (mut twos, mut fives) = (0usize, 0usize);
    while d.is_even() {
        d /= &two;
        twos += 1;
    }
    while (&d % &five).is_zero() {
        d /= &five;
        fives += 1;
    }
    if d.is_one() {
        digits = twos.max(fives);
    }
    if digits > 0 && digits <= 60 {
        let scaled = v * BigRational::from_integer(num_traits::pow(BigInt::from(10), digits));
        let n = scaled.to_integer();
        let neg = n.is_negative();
        let s = n.abs().to_string();
        let s = format!("{:0>width$}", s, width = digits + 1);
        let (a, b) = s.split_at(s.len() - digits);
        return format!("{}{a}.{b}", if neg { "-" } else { "" });
    }
    let approx = v.to_f64().map_or_else(|| "?".into(), |f| format!("{f}"));
    format!("{}/{} ≈ {approx}", v.numer(), v.denom())
}

/// The shape of expressions a constrained model may write: numbers and operators alternating,
/// with one level of parentheses. A grammar built from it cannot produce a malformed
/// expression (the parser accepts more, e.g. functions, from unconstrained models).
pub const EXPRESSION_PATTERN: &str = r"^ *(-?[0-9]+(\.[0-9]+)?|\( *-?[0-9]+(\.[0-9]+)?( *(\*\*|[-+*/%^]) *-?[0-9]+(\.[0-9]+)?)* *\))( *(\*\*|[-+*/%^]) *(-?[0-9]+(\.[0-9]+)?|\( *-?[0-9]+(\.[0-9]+)?( *(\*\*|[-+*/%^]) *-?[0-9]+(\.[0-9]+)?)* *\)))* *$";

/// The `calculator` tool.
pub struct Calculator;

impl Tool for Calculator {
    fn name(&self) -> &str {
        "calculator"
    }

    fn description(&self) -> &str {
        "Evaluate an arithmetic expression exactly (+ - * / % ^, parentheses, decimals, \
         abs/floor/ceil/round/sqrt). Example: {\"expression\": \"17 * 23\"}"
    }

    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {
            "expression": {"type": "string", "maxLength": 200, "pattern": EXPRESSION_PATTERN,
                           "description": "The arithmetic expression, e.g. 17 * 23"}},
            "required": ["expression"], "additionalProperties": false})
    }

    fn call<'a>(
        &'a self,
        args: Value,
        _ctx: &'a ToolContext,
    ) -> BoxFuture<'a, Result<ToolOutput, ToolError>> {
        Box::pin(async move {
            let expr = args
                .get("expression")
                .and_then(Value::as_str)
                .ok_or_else(|| err("\"expression\" (a string) is required"))?;
            Ok(ToolOutput::text(evaluate(expr)?.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_admits_only_well_formed_expressions() {
        let re = regex::Regex::new(EXPRESSION_PATTERN).unwrap();
        for ok in [
            "17 * 23",
            "(15 + 27) * 3 / 7",
            "2 ** 10",
            "-3.5 % 2",
            "(1)",
            " 4^2 ",
        ] {
            assert!(re.is_match(ok), "{ok}");
            assert!(evaluate(ok).is_ok(), "{ok}");
        }
        for bad in [
            "17 *", "((1))", "x + 1", "}} 17", "1 2", "", "(1 + 2", "sqrt(4)",
        ] {
            assert!(!re.is_match(bad), "{bad}");
        }
    }

    #[test]
    fn exact_answers() {
        let check = |expr: &str, expect: &str| match evaluate(expr) {
            Ok(r) => assert_eq!(r.to_string(), expect, "{expr}"),
            Err(e) => assert_eq!(format!("error: {e}"), expect, "{expr}"),
        };
        check("17 * 23", "391");
        check("0.1 + 0.2", "0.3");
        check("2^100", "1267650600228229401496703205376");
        check("2**10", "1024");
        check("-2^2", "-4");
        check("(-2)^2", "4");
        check("2^3^2", "512");
        check("2^-2", "0.25");
        check("1/3", "1/3 ≈ 0.3333333333333333");
        check("22/7*7", "22");
        check("7 % 3", "1");
        check("-7 % 3", "2");
        check("1.5e3 + 2E-2", "1500.02");
        check("12 × 3 ÷ 4 − 1", "8");
        check("1,000,000 / 8", "125000");
        check("sqrt(144/25)", "2.4");
        check("sqrt(2)", "≈ 1.4142135623730951");
        check("round(2.5) + floor(-1.5) + ceil(1.2) + abs(-3)", "6");
        check("((1))", "1");
        check("1/0", "error: invalid arguments: division by zero");
        check(
            "2^0.5",
            "error: invalid arguments: only whole-number exponents are exact; use sqrt for roots",
        );
        check(
            "10^100000",
            "error: invalid arguments: exponents are limited to ±10000",
        );
        check(
            "(2^5000)^5000",
            "error: invalid arguments: the number grew too large (over 100,000 bits)",
        );
        check(
            "import os",
            "error: invalid arguments: unknown name \"import\": only numbers, operators and abs/floor/ceil/round/sqrt(...)",
        );
        check(
            "1 +",
            "error: invalid arguments: the expression ends too early",
        );
        check(
            "(1 + 2",
            "error: invalid arguments: missing ')' at position 6",
        );
        check(
            "1 2",
            "error: invalid arguments: unexpected '2' at position 2",
        );
        check("", "error: invalid arguments: the expression is empty");
    }
}
