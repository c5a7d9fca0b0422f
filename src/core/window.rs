//! When a key may be used: its validity window, in Unix milliseconds.

/// When a key may be used: `not_before <= now < expires_at`, in Unix milliseconds.
/// Unbounded ends are `i64::MIN` / `i64::MAX`: two plain numbers keep `Key` small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub not_before: i64,
    pub expires_at: i64,
}

impl Default for Window {
    fn default() -> Self {
        Window { not_before: i64::MIN, expires_at: i64::MAX }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Active,
    NotYetValid,
    Expired,
}

impl Window {
    pub fn at(&self, now_ms: i64) -> Validity {
        if now_ms >= self.expires_at {
            Validity::Expired
        } else if now_ms < self.not_before {
            Validity::NotYetValid
        } else {
            Validity::Active
        }
    }

    pub fn is_bounded(&self) -> bool {
        *self != Window::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bounds_are_half_open() {
        let w = Window { not_before: 10, expires_at: 20 };
        assert_eq!(w.at(9), Validity::NotYetValid);
        assert_eq!(w.at(10), Validity::Active);
        assert_eq!(w.at(19), Validity::Active);
        assert_eq!(w.at(20), Validity::Expired);
        assert_eq!(Window::default().at(i64::MIN), Validity::Active);
        assert_eq!(Window::default().at(i64::MAX - 1), Validity::Active);
    }
}
