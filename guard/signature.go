package guard

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pamworker/pamworker/events"
)

// Signed-event headers, as Standard Webhooks names them.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// Rejection codes of signature checks.
const (
	CodeUnsigned     = "unsigned_event"
	CodeBadSignature = "bad_signature"
	CodeSignatureAge = "signature_expired"
)

// Signing says which subjects must carry a valid signature and with which keys. Keys are
// Standard Webhooks strings: "whsec_<base64>" (HMAC-SHA256 secret) or "whpk_<base64>" (ed25519
// public key). Any one valid signature by any configured key passes, so keys rotate by adding
// the new one, moving signers over, then removing the old one.
type Signing struct {
	Subjects  []string      // subject patterns (NATS wildcards * and >) that require a signature
	Keys      []string      // whsec_ and whpk_ keys
	Tolerance time.Duration // how far a signature's timestamp may be from now (default 5m)
}

// Verifier checks signed events.
type Verifier struct {
	subjects  []string
	secrets   [][]byte
	publics   []ed25519.PublicKey
	tolerance time.Duration
	now       func() time.Time
}

// NewVerifier parses s; it fails on a malformed key or on subjects without keys.
func NewVerifier(s Signing) (*Verifier, error) {
	v := &Verifier{subjects: s.Subjects, tolerance: s.Tolerance, now: time.Now}
	if v.tolerance <= 0 {
		v.tolerance = 5 * time.Minute
	}
	for i, k := range s.Keys {
		switch {
		case strings.HasPrefix(k, "whsec_"):
			b, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(k, "whsec_"))
			if err != nil || len(b) < 16 {
				return nil, fmt.Errorf("signing key %d: a whsec_ key is base64 of at least 16 bytes", i+1)
			}
			v.secrets = append(v.secrets, b)
		case strings.HasPrefix(k, "whpk_"):
			b, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(k, "whpk_"))
			if err != nil || len(b) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("signing key %d: a whpk_ key is base64 of a 32-byte ed25519 public key", i+1)
			}
			v.publics = append(v.publics, ed25519.PublicKey(b))
		default:
			return nil, fmt.Errorf("signing key %d: must begin with whsec_ or whpk_", i+1)
		}
	}
	if len(v.subjects) > 0 && len(v.secrets)+len(v.publics) == 0 {
		return nil, errors.New("signed subjects are configured but no signing key")
	}
	return v, nil
}

// Required reports whether events on subject must be signed.
func (v *Verifier) Required(subject string) bool {
	for _, p := range v.subjects {
		if subjectMatch(p, subject) {
			return true
		}
	}
	return false
}

// SigningString is what a signature covers: the Standard Webhooks string id.timestamp.body
// with the action subject before the body, so a signature made for one action cannot be
// replayed on another (an enable's signature on a disable). A Standard Webhooks library signs
// it when given subject + "." + body as its payload.
func SigningString(id, timestamp, subject string, body []byte) []byte {
	b := make([]byte, 0, len(id)+len(timestamp)+len(subject)+len(body)+3)
	b = append(b, id...)
	b = append(b, '.')
	b = append(b, timestamp...)
	b = append(b, '.')
	b = append(b, subject...)
	b = append(b, '.')
	return append(b, body...)
}

// Check verifies the signature of an event: header reads the message's headers, body is the
// message as it arrived on subject, eventID the id the event was decoded with. A nil result
// means the subject needs no signature or the signature is good.
func (v *Verifier) Check(subject string, header func(string) string, body []byte, eventID string) *events.Rejection {
	if v == nil || !v.Required(subject) {
		return nil
	}
	id, ts, sigs := header(HeaderID), header(HeaderTimestamp), header(HeaderSignature)
	if id == "" || ts == "" || sigs == "" {
		return &events.Rejection{Code: CodeUnsigned, Message: fmt.Sprintf(
			"events on %s must be signed (headers %s, %s, %s)", subject, HeaderID, HeaderTimestamp, HeaderSignature)}
	}
	secs, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return &events.Rejection{Code: CodeBadSignature, Message: HeaderTimestamp + " is not a Unix time in seconds"}
	}
	if age := v.now().Sub(time.Unix(secs, 0)); age > v.tolerance || age < -v.tolerance {
		return &events.Rejection{Code: CodeSignatureAge, Message: fmt.Sprintf(
			"signature timestamp is %s from now, beyond the %s tolerance", age.Round(time.Second), v.tolerance)}
	}
	if id != eventID {
		return &events.Rejection{Code: CodeBadSignature, Message: fmt.Sprintf(
			"the signed %s %q is not the event's id %q", HeaderID, id, eventID)}
	}
	signed := SigningString(id, ts, subject, body)
	for _, sig := range strings.Fields(sigs) {
		version, value, _ := strings.Cut(sig, ",")
		raw, err := base64.StdEncoding.DecodeString(value)
		if err != nil {
			continue
		}
		switch version {
		case "v1":
			for _, key := range v.secrets {
				if hmac.Equal(raw, hmacSign(key, signed)) {
					return nil
				}
			}
		case "v1a":
			for _, key := range v.publics {
				if ed25519.Verify(key, signed, raw) {
					return nil
				}
			}
		}
	}
	return &events.Rejection{Code: CodeBadSignature, Message: "no signature matches a configured key (wrong key, or the event was altered)"}
}

func hmacSign(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}

// Sign returns the Standard Webhooks headers signing body as event id on subject at time t,
// with key (a whsec_ secret, or "whsk_<base64 ed25519 private key>" for the asymmetric scheme).
func Sign(key, subject, id string, t time.Time, body []byte) (map[string]string, error) {
	ts := strconv.FormatInt(t.Unix(), 10)
	signed := SigningString(id, ts, subject, body)
	var sig string
	switch {
	case strings.HasPrefix(key, "whsec_"):
		b, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(key, "whsec_"))
		if err != nil {
			return nil, errors.New("the whsec_ key is not base64")
		}
		sig = "v1," + base64.StdEncoding.EncodeToString(hmacSign(b, signed))
	case strings.HasPrefix(key, "whsk_"):
		b, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(key, "whsk_"))
		if err != nil || len(b) != ed25519.PrivateKeySize {
			return nil, errors.New("a whsk_ key is base64 of a 64-byte ed25519 private key")
		}
		sig = "v1a," + base64.StdEncoding.EncodeToString(ed25519.Sign(ed25519.PrivateKey(b), signed))
	default:
		return nil, errors.New("a signing key begins with whsec_ or whsk_")
	}
	return map[string]string{HeaderID: id, HeaderTimestamp: ts, HeaderSignature: sig}, nil
}

// SubjectMatch reports whether subject matches pattern, with NATS wildcards: * one token, >
// the rest.
func SubjectMatch(pattern, subject string) bool { return subjectMatch(pattern, subject) }

// subjectMatch matches a NATS subject against a pattern with * (one token) and > (the rest).
func subjectMatch(pattern, subject string) bool {
	p, s := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, tok := range p {
		switch {
		case tok == ">":
			return i < len(s)
		case i >= len(s):
			return false
		case tok != "*" && tok != s[i]:
			return false
		}
	}
	return len(p) == len(s)
}
