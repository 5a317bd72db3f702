package sandbox_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/pamworker/pamworker/sandbox"
)

// A test mounts the simulator in an httptest server, injects a fault and checks what the
// client saw and what the simulator did.
func ExampleSegura() {
	sim := sandbox.NewSegura(sandbox.SeguraOptions{ClientID: "id", ClientSecret: "secret"})
	srv := httptest.NewServer(sim)
	defer srv.Close()

	req, _ := http.NewRequest("POST", srv.URL+sandbox.SeguraTokenPath, strings.NewReader("grant_type=client_credentials"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("id", "secret")
	resp, _ := http.DefaultClient.Do(req)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	token := strings.Split(string(body), `"`)[3] // {"access_token":"<token>",...}

	sim.FailNext(1, sandbox.Fault{Status: 503, RetryAfter: "2"})
	for range 2 {
		req, _ := http.NewRequest("DELETE", srv.URL+"/api/pam/credential/svc07@host07", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, _ := http.DefaultClient.Do(req)
		resp.Body.Close()
		fmt.Printf("%d Retry-After=%q\n", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	active, _, _ := sim.Credential(7)
	fmt.Println("active:", active, "calls:", sim.CallsTo("DELETE", "/pam/credential/"))
	// Output:
	// 503 Retry-After="2"
	// 200 Retry-After=""
	// active: false calls: 2
}
