package handlers_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/handlers"
)

func TestRegistry(t *testing.T) {
	t.Parallel()
	r := handlers.NewRegistry()
	var got events.Event
	h := handlers.HandlerFunc(func(_ context.Context, ev events.Event) (handlers.Outcome, error) {
		got = ev
		return handlers.Outcome{Message: "done"}, nil
	})
	for _, a := range events.Actions() {
		if err := r.Add(a, h); err != nil {
			t.Fatalf("Add(%q): %v", a, err)
		}
	}
	err := r.Add(events.SessionDrop, h)
	if err == nil || !strings.Contains(err.Error(), events.SessionDrop) || !strings.Contains(err.Error(), "already registered") {
		t.Errorf("duplicate Add = %v, want an error naming %s", err, events.SessionDrop)
	}
	for _, subject := range []string{"", "pam.session", "results.pam.session.drop", "pam.>"} {
		if err := handlers.NewRegistry().Add(subject, h); err == nil || !strings.Contains(err.Error(), "not an action subject") {
			t.Errorf("Add(%q) = %v, want an error", subject, err)
		}
	}

	lookedUp, ok := r.Lookup(events.CredentialEnable)
	if !ok {
		t.Fatal("Lookup of a registered subject failed")
	}
	out, err := lookedUp.Handle(context.Background(), events.Event{ID: "e1", Action: events.CredentialEnable})
	if err != nil || out.Message != "done" || got.ID != "e1" {
		t.Errorf("Handle through the registry = %+v, %v (saw %+v)", out, err, got)
	}
	if _, ok := handlers.NewRegistry().Lookup(events.SessionDrop); ok {
		t.Error("Lookup in an empty registry succeeded")
	}
}

func TestVendorAndTargetLabel(t *testing.T) {
	t.Parallel()
	tests := []struct{ action, vendor string }{
		{events.SessionDrop, "segura"},
		{events.CredentialDisable, "segura"},
		{events.CredentialEnable, "segura"},
		{events.CustodyRelease, "segura"},
		{events.ElementSessionsDelete, "element"},
	}
	for _, tc := range tests {
		if got := handlers.Vendor(tc.action); got != tc.vendor {
			t.Errorf("Vendor(%q) = %q, want %q", tc.action, got, tc.vendor)
		}
		if got, want := handlers.TargetLabel(tc.action, "dr"), tc.vendor+"/dr"; got != want {
			t.Errorf("TargetLabel(%q) = %q, want %q", tc.action, got, want)
		}
	}
}

func TestNotConfigured(t *testing.T) {
	t.Parallel()
	for _, vendor := range []string{"segura", "element"} {
		_, err := handlers.NotConfigured(vendor).Handle(context.Background(), events.Event{Action: events.SessionDrop})
		var rej *events.Rejection
		if !errors.As(err, &rej) || rej.Code != events.CodeTargetNotConfigured {
			t.Fatalf("NotConfigured(%q) = %v, want target_not_configured", vendor, err)
		}
		if want := "PAMWORKER_" + strings.ToUpper(vendor) + "_URL"; !strings.Contains(rej.Message, want) {
			t.Errorf("message %q does not name %s", rej.Message, want)
		}
	}
}

func TestTargetsPick(t *testing.T) {
	t.Parallel()
	targets := handlers.Targets[string]{"default": "client-a", "dr": "client-b"}
	tests := []struct {
		target, want string
		wantErr      bool
	}{
		{"default", "client-a", false},
		{"dr", "client-b", false},
		{"lab", "", true},
		{"", "", true},
	}
	for _, tc := range tests {
		got, err := targets.Pick(events.Event{Action: events.ElementSessionsDelete, Target: tc.target})
		if got != tc.want {
			t.Errorf("Pick(%q) = %q, want %q", tc.target, got, tc.want)
		}
		var rej *events.Rejection
		switch {
		case tc.wantErr && (!errors.As(err, &rej) || rej.Code != events.CodeTargetNotConfigured):
			t.Errorf("Pick(%q) error = %v, want target_not_configured", tc.target, err)
		case tc.wantErr && !strings.Contains(rej.Message, `element target "`+tc.target+`"`):
			t.Errorf("Pick(%q) message %q does not name the target", tc.target, rej.Message)
		case !tc.wantErr && err != nil:
			t.Errorf("Pick(%q) error = %v", tc.target, err)
		}
	}
}
