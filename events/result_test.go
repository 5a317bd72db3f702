package events_test

import (
	"encoding/json"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/pamworker/pamworker/events"
)

func decodeObject(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("not a JSON object: %v\n%s", err, b)
	}
	return m
}

func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestResultMarshalContractFields(t *testing.T) {
	t.Parallel()
	res := events.Result{
		EventID:       "01J",
		Action:        events.CredentialDisable,
		Target:        "default",
		Status:        events.Failed,
		Attempts:      3,
		Message:       "1007: Credential not found",
		Error:         &events.ErrorInfo{Code: "1007", Message: "1007: Credential not found", HTTPStatus: 400},
		CorrelationID: "INC-4711",
		RequestedBy:   "soar",
		DurationMS:    12.4,
		FinishedAt:    events.Timestamp(time.Date(2026, 11, 22, 10, 0, 0, 123456789, time.UTC)),
		Details:       map[string]any{"count": 2},
	}
	b, err := res.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got := decodeObject(t, b)
	want := map[string]any{
		"event_id":       "01J",
		"action":         "pam.credential.disable",
		"target":         "default",
		"status":         "failed",
		"noop":           false,
		"dry_run":        false,
		"attempts":       float64(3),
		"message":        "1007: Credential not found",
		"error":          map[string]any{"code": "1007", "message": "1007: Credential not found", "http_status": float64(400), "retryable": false},
		"correlation_id": "INC-4711",
		"requested_by":   "soar",
		"duration_ms":    12.4,
		"finished_at":    "2026-11-22T10:00:00.123Z",
		"details":        map[string]any{"count": float64(2)},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Marshal\n got: %v\nwant: %v", got, want)
	}
}

func TestResultMarshalEmpty(t *testing.T) {
	t.Parallel()
	b, err := events.Result{Status: events.Succeeded}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got := decodeObject(t, b)
	wantKeys := []string{"action", "attempts", "correlation_id", "details", "dry_run", "duration_ms", "error",
		"event_id", "finished_at", "message", "noop", "requested_by", "status", "target"}
	if !reflect.DeepEqual(keys(got), wantKeys) {
		t.Errorf("keys = %v, want %v", keys(got), wantKeys)
	}
	if d, ok := got["details"].(map[string]any); !ok || len(d) != 0 {
		t.Errorf("details = %#v, want {}", got["details"])
	}
	if got["error"] != nil {
		t.Errorf("error = %#v, want null", got["error"])
	}
}

func TestNewResult(t *testing.T) {
	t.Parallel()
	ev := events.Event{ID: "e1", Action: events.SessionDrop, Target: "dr", DryRun: true, CorrelationID: "INC-1", RequestedBy: "soar", SessionID: "s"}
	res := events.NewResult(ev)
	if res.EventID != "e1" || res.Action != events.SessionDrop || res.Target != "dr" || !res.DryRun ||
		res.CorrelationID != "INC-1" || res.RequestedBy != "soar" || res.Status != "" {
		t.Errorf("NewResult = %+v", res)
	}
	if res.Details == nil {
		t.Error("NewResult leaves Details nil")
	}
	b, err := res.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if got := decodeObject(t, b)["details"]; !reflect.DeepEqual(got, map[string]any{}) {
		t.Errorf("details = %#v", got)
	}
}

func TestResultSubjectAndMsgID(t *testing.T) {
	t.Parallel()
	if got := events.ResultSubject(events.SessionDrop); got != "results.pam.session.drop" {
		t.Errorf("ResultSubject = %q", got)
	}
	if got := events.ResultMsgID("01J"); got != "result:01J" {
		t.Errorf("ResultMsgID = %q", got)
	}
}

func TestTimestamp(t *testing.T) {
	t.Parallel()
	plus2 := time.FixedZone("CEST", 2*60*60)
	tests := []struct {
		in   time.Time
		want string
	}{
		{time.Date(2026, 11, 22, 10, 0, 0, 123000000, time.UTC), `"2026-11-22T10:00:00.123Z"`},
		{time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC), `"2026-11-22T10:00:00.000Z"`},
		{time.Date(2026, 11, 22, 10, 0, 0, 999999999, time.UTC), `"2026-11-22T10:00:00.999Z"`},
		{time.Date(2026, 11, 22, 12, 0, 0, 5000000, plus2), `"2026-11-22T10:00:00.005Z"`},
	}
	for _, tc := range tests {
		b, err := json.Marshal(events.Timestamp(tc.in))
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != tc.want {
			t.Errorf("Timestamp(%v) = %s, want %s", tc.in, b, tc.want)
		}
		var back events.Timestamp
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("Unmarshal(%s): %v", b, err)
		}
		if !time.Time(back).Equal(tc.in.Truncate(time.Millisecond)) {
			t.Errorf("round trip of %v = %v", tc.in, time.Time(back))
		}
	}
	for _, bad := range []string{`12`, `"yesterday"`, `null`} {
		var ts events.Timestamp
		if err := json.Unmarshal([]byte(bad), &ts); err == nil && bad != `null` {
			t.Errorf("Unmarshal(%s) accepted", bad)
		}
	}
}

func TestResultUnmarshalRoundTrip(t *testing.T) {
	t.Parallel()
	in := events.Result{EventID: "e", Status: events.Rejected, Error: &events.ErrorInfo{Code: events.CodeInvalidEvent, Message: "m"},
		FinishedAt: events.Timestamp(time.Date(2026, 1, 2, 3, 4, 5, 6000000, time.UTC)), Details: map[string]any{}}
	b, err := in.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var out events.Result
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("round trip\n got: %+v\nwant: %+v", out, in)
	}
	// Consumers get a stable shape: http_status is always there, 0 when no HTTP reply was had.
	if v, ok := decodeObject(t, b)["error"].(map[string]any)["http_status"]; !ok || v != float64(0) {
		t.Errorf("http_status = %v (present %v), want 0 for an error without an HTTP status", v, ok)
	}
}
