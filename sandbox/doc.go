// Package sandbox holds stateful, in-process simulators of the two vendor APIs pamworker calls:
// Segura PAM Core (REST behind OAuth2 client credentials) and NetApp Element (JSON-RPC). They
// answer with the paths, envelopes and error texts of the vendor documentation, keep state
// (credentials turn inactive, sessions disappear) so a second call sees the first, and let a test
// inject faults (status codes, Retry-After, delays, "applied but failed") and count requests.
// `pamworker --sandbox` serves them with Start so every action can be tried on a laptop; the
// project's tests mount them in httptest servers as fakes of the vendors.
package sandbox
