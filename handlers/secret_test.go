package handlers_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/pamworker/pamworker/handlers"
)

const secretValue = "hunter2-very-secret"

func TestSecretRedacts(t *testing.T) {
	t.Parallel()
	s := handlers.NewSecret(secretValue)
	type holder struct {
		Name   string
		Secret handlers.Secret
		Ptr    *handlers.Secret
		List   []handlers.Secret
		ByName map[string]handlers.Secret
	}
	h := holder{Name: "svc", Secret: s, Ptr: &s, List: []handlers.Secret{s}, ByName: map[string]handlers.Secret{"k": s}}
	outputs := map[string]string{
		"%v":             fmt.Sprintf("%v", s),
		"%s":             fmt.Sprintf("%s", s),
		"%+v":            fmt.Sprintf("%+v", s),
		"%#v":            fmt.Sprintf("%#v", s),
		"%q":             fmt.Sprintf("%q", s),
		"%x":             fmt.Sprintf("%x", s),
		"%d":             fmt.Sprintf("%d", s),
		"Sprint":         fmt.Sprint(s),
		"Sprintln":       fmt.Sprintln(s),
		"pointer %v":     fmt.Sprintf("%v", &s),
		"String":         s.String(),
		"GoString":       s.GoString(),
		"struct %v":      fmt.Sprintf("%v", h),
		"struct %+v":     fmt.Sprintf("%+v", h),
		"struct %#v":     fmt.Sprintf("%#v", h),
		"struct ptr %+v": fmt.Sprintf("%+v", &h),
	}
	for _, marshal := range []struct {
		name string
		v    any
	}{{"json secret", s}, {"json struct", h}} {
		b, err := json.Marshal(marshal.v)
		if err != nil {
			t.Fatalf("%s: %v", marshal.name, err)
		}
		outputs[marshal.name] = string(b)
	}
	text, err := s.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	outputs["MarshalText"] = string(text)
	for _, newHandler := range []struct {
		name string
		new  func(*bytes.Buffer) slog.Handler
	}{
		{"slog json", func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) }},
		{"slog text", func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) }},
	} {
		var buf bytes.Buffer
		log := slog.New(newHandler.new(&buf))
		log.Info("msg", "secret", s, "holder", h, slog.Any("any", s), slog.Group("g", "secret", s))
		log.With("with", s).Info("msg")
		outputs[newHandler.name] = buf.String()
	}

	for name, out := range outputs {
		if strings.Contains(out, secretValue) {
			t.Errorf("%s leaks the secret: %s", name, out)
		}
		if !strings.Contains(out, "[REDACTED]") {
			t.Errorf("%s shows no redaction mark: %s", name, out)
		}
	}
	if got := s.Reveal(); got != secretValue {
		t.Errorf("Reveal() = %q, want %q", got, secretValue)
	}
	if s.IsZero() {
		t.Error("IsZero() = true for a set secret")
	}
}

func TestSecretZero(t *testing.T) {
	t.Parallel()
	var zero handlers.Secret
	if !zero.IsZero() || !handlers.NewSecret("").IsZero() {
		t.Error("IsZero() = false for an empty secret")
	}
	// An unset secret prints as nothing, so "is it set?" stays visible in a config dump.
	if got := fmt.Sprintf("%v|%s", zero, zero); got != "|" {
		t.Errorf("empty secret prints %q", got)
	}
	if zero.Reveal() != "" {
		t.Error("Reveal() of the zero secret is not empty")
	}
}

// fmt cannot call methods through unexported fields, so a Secret held in one (as the vendor
// clients hold their passwords) must not print its value by reflection either.
func TestSecretInUnexportedField(t *testing.T) {
	t.Parallel()
	type client struct {
		name     string
		password handlers.Secret
		nested   struct{ token handlers.Secret }
	}
	c := client{name: "svc", password: handlers.NewSecret(secretValue)}
	c.nested.token = handlers.NewSecret(secretValue)
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("msg", "client", c)
	for _, out := range []string{
		fmt.Sprintf("%v", c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), fmt.Sprintf("%+v", &c), buf.String(),
	} {
		if strings.Contains(out, secretValue) {
			t.Errorf("unexported secret leaks: %s", out)
		}
	}
}
