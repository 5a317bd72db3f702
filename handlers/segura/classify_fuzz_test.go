package segura

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/pamworker/pamworker/handlers"
)

// FuzzClassify feeds arbitrary replies to the Segura classifier: it must never panic, must
// return exactly one verdict, and must never call a failed HTTP status a success or a non-JSON
// body a success.
func FuzzClassify(f *testing.F) {
	for _, seed := range []struct {
		status int
		body   string
	}{
		{200, `{"code":200,"response":{"status":200,"message":"Credential successfully deactivated","error":false,"error_code":0,"detail":"","mensagem":"x","erro":false,"cod_erro":0}}`},
		{400, `{"code":400,"response":{"status":400,"message":"1007: Credential not found","error":true,"error_code":1},"exception":{"code":1007,"message":"1007: Credential not found","detail":null}}`},
		{400, `{"code":400,"response":{"message":"1008: Credential inactive","error":true}}`},
		{500, `{"code":500,"response":{"message":"You are not authorized to access this resource.","error":true}}`},
		{401, `{"message":"No route matched with those values"}`},
		{503, ``}, {200, `<html>proxy</html>`}, {200, `{"code":"200"}`}, {200, `null`},
		{400, `{"exception":{"code":"abc"}}`}, {429, `{}`},
	} {
		f.Add(seed.status, seed.body, uint8(opDisable), "2")
	}
	f.Fuzz(func(t *testing.T, status int, body string, op uint8, retryAfter string) {
		h := http.Header{}
		h.Set("Retry-After", retryAfter)
		out, _, err := classify(operation(op%4), status, h, []byte(body), time.Unix(1_800_000_000, 0))
		kind, re, pe, de := handlers.Classify(err)
		switch kind.String() {
		case "":
			if (status < 200 || status > 299) && !out.Noop {
				t.Fatalf("HTTP %d %q classified as a plain success", status, body)
			}
		case "retry":
			if re == nil || re.After < 0 || re.After > 10*time.Minute {
				t.Fatalf("bad retryable verdict %+v", re)
			}
		case "permanent":
			if pe == nil || (pe.Code == "" && pe.HTTPStatus == 0) {
				t.Fatalf("a refusal without a code: %+v", pe)
			}
		case "down":
			if de == nil {
				t.Fatal("down without a TargetDownError")
			}
		}
		if err != nil && out.Noop {
			t.Fatal("an error that is also a noop success")
		}
		var unknown *handlers.RetryableError
		if err != nil && !errors.As(err, &unknown) && pe == nil && de == nil {
			t.Fatalf("an error of no known kind: %T", err)
		}
	})
}
