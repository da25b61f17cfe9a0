package agent

import (
	"strings"
	"testing"
)

func TestDigestIsStableAndShort(t *testing.T) {
	d := Digest()
	if len(d) != 16 || d != Digest() {
		t.Fatalf("Digest() = %q, then %q: want the same 16 hex digits", d, Digest())
	}
}

func TestCompatibleNamesAStaleGuestImage(t *testing.T) {
	for _, tc := range []struct {
		name string
		info *InfoResponse
		ok   bool
	}{
		{"same API", &InfoResponse{ApiVersion: APIVersion, ApiDigest: Digest()}, true},
		{"agent from before the check", &InfoResponse{AgentVersion: "0.1.0", ApiVersion: APIVersion}, false},
		{"another revision of v1", &InfoResponse{ApiVersion: APIVersion, ApiDigest: "0123456789abcdef"}, false},
		{"another major version", &InfoResponse{ApiVersion: APIVersion + 1, ApiDigest: Digest()}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Compatible(tc.info)
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "guest image is stale") {
				t.Fatalf("Compatible = %v, want an error naming the guest image as stale", err)
			}
		})
	}
}
