package handlers

import (
	"encoding/json"
	"fmt"
	"log/slog"
)

// Secret holds a password, client secret or token. Every way of printing it — fmt verbs, slog,
// JSON — shows a redaction mark; only Reveal returns the value, at the one place it is sent.
//
// The value sits behind a pointer: fmt cannot call String or Format on a Secret held in an
// unexported struct field and prints such fields by reflection, which then shows an address.
type Secret struct{ v *string }

// NewSecret wraps s.
func NewSecret(s string) Secret {
	if s == "" {
		return Secret{}
	}
	return Secret{v: &s}
}

const redacted = "[REDACTED]"

// Reveal returns the secret value. Call it only where the value leaves for its vendor.
func (s Secret) Reveal() string {
	if s.v == nil {
		return ""
	}
	return *s.v
}

// IsZero reports whether no secret is set.
func (s Secret) IsZero() bool { return s.v == nil }

// String implements fmt.Stringer.
func (s Secret) String() string {
	if s.v == nil {
		return ""
	}
	return redacted
}

// GoString implements fmt.GoStringer so %#v redacts too.
func (s Secret) GoString() string { return `handlers.Secret("` + s.String() + `")` }

// Format implements fmt.Formatter: every verb prints the redacted form.
func (s Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(s.String())) }

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON implements json.Marshaler.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// MarshalText implements encoding.TextMarshaler (YAML and others).
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }
