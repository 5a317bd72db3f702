package element

import (
	"net/http"
	"testing"
	"time"

	"github.com/pamworker/pamworker/handlers"
)

// FuzzClassify feeds arbitrary JSON-RPC replies to the Element classifier: it must never panic,
// must give one verdict, and must report success only for a 2xx reply with a result that
// decodes into the documented shape.
func FuzzClassify(f *testing.F) {
	for _, seed := range []struct {
		status int
		body   string
	}{
		{200, `{"id":1,"result":{"sessions":[{"sessionID":"b12bfc64","username":"admin","authMethod":"Cluster"}]}}`},
		{200, `{"id":1,"result":{"sessions":[]}}`},
		{200, `{"id":1,"error":{"code":500,"name":"xDBVersionMismatch","message":"retry"}}`},
		{200, `{"id":1,"error":{"code":500,"name":"xPermissionDenied","message":"no"}}`},
		{500, `{"id":1,"error":{"code":500,"name":"xNotReadyForIO","message":"busy"}}`},
		{401, ``}, {503, `busy`}, {200, `{"id":1,"result":{"sessions":"x"}}`}, {200, `{"id":1}`}, {200, `[]`},
	} {
		f.Add(seed.status, seed.body)
	}
	f.Fuzz(func(t *testing.T, status int, body string) {
		var res sessionsResult
		err := classify(status, http.Header{}, []byte(body), &res, time.Unix(1_800_000_000, 0))
		kind, _, pe, _ := handlers.Classify(err)
		if kind.String() == "" && (status < 200 || status > 299) {
			t.Fatalf("HTTP %d %q classified as success", status, body)
		}
		if kind.String() == "permanent" && pe.Code == "" {
			t.Fatalf("a refusal without a code: %+v", pe)
		}
	})
}
