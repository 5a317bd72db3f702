package events

import (
	"encoding/json"
	"time"
)

// Status is a result's terminal state.
type Status string

// The three terminal states of the contract.
const (
	Succeeded Status = "succeeded" // the action was applied (or was already in effect: Noop)
	Failed    Status = "failed"    // the vendor refused, or retries ran out
	Rejected  Status = "rejected"  // the event was invalid or not allowed; no API call was made
)

// ErrorInfo is the "error" object of a result.
type ErrorInfo struct {
	Code       string `json:"code"`
	Message    string `json:"message"`
	HTTPStatus int    `json:"http_status"` // 0 when no HTTP reply is behind the error
	Retryable  bool   `json:"retryable"`
}

// Result is the terminal answer to one event, published on results.<action subject>.
type Result struct {
	EventID       string         `json:"event_id"`
	Action        string         `json:"action"`
	Target        string         `json:"target"`
	Status        Status         `json:"status"`
	Noop          bool           `json:"noop"`
	DryRun        bool           `json:"dry_run"`
	Attempts      int            `json:"attempts"`
	Message       string         `json:"message"`
	Error         *ErrorInfo     `json:"error"`
	CorrelationID string         `json:"correlation_id"`
	RequestedBy   string         `json:"requested_by"`
	DurationMS    float64        `json:"duration_ms"`
	FinishedAt    Timestamp      `json:"finished_at"`
	Details       map[string]any `json:"details"`
}

// ResultSubject is where the result of an event on action subject is published.
func ResultSubject(action string) string { return "results." + action }

// ResultMsgID is the Nats-Msg-Id of the result of eventID, deduplicating republished results.
func ResultMsgID(eventID string) string { return "result:" + eventID }

// NewResult starts the result of ev with the event's own fields filled in.
func NewResult(ev Event) Result {
	return Result{
		EventID:       ev.ID,
		Action:        ev.Action,
		Target:        ev.Target,
		DryRun:        ev.DryRun,
		CorrelationID: ev.CorrelationID,
		RequestedBy:   ev.RequestedBy,
		Details:       map[string]any{},
	}
}

// Marshal encodes r, never with a null details object.
func (r Result) Marshal() ([]byte, error) {
	if r.Details == nil {
		r.Details = map[string]any{}
	}
	return json.Marshal(r)
}

// Timestamp is a UTC time encoded with millisecond precision, e.g. 2026-11-22T10:00:00.123Z.
type Timestamp time.Time

const timestampLayout = "2006-01-02T15:04:05.000Z07:00"

// MarshalJSON implements json.Marshaler.
func (t Timestamp) MarshalJSON() ([]byte, error) {
	return []byte(`"` + time.Time(t).UTC().Format(timestampLayout) + `"`), nil
}

// UnmarshalJSON implements json.Unmarshaler.
func (t *Timestamp) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return err
	}
	*t = Timestamp(v)
	return nil
}
