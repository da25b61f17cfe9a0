package agent

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"
)

// TestDigestCoversTheWholeDescriptor: the bytes Digest hashes are agent.proto's
// complete descriptor (every message, field and RPC), as the protobuf
// runtime sees it, so any API change changes the digest.
func TestDigestCoversTheWholeDescriptor(t *testing.T) {
	var raw descriptorpb.FileDescriptorProto
	if err := proto.Unmarshal([]byte(file_agent_proto_rawDesc), &raw); err != nil {
		t.Fatal(err)
	}
	if want := protodesc.ToFileDescriptorProto(File_agent_proto); !proto.Equal(&raw, want) {
		t.Fatalf("the embedded descriptor differs from the registered one:\n%v\n%v", &raw, want)
	}
	if len(raw.GetService()) == 0 || len(raw.GetMessageType()) < 10 {
		t.Fatalf("descriptor has %d services, %d messages: not the agent API", len(raw.GetService()), len(raw.GetMessageType()))
	}
}

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
