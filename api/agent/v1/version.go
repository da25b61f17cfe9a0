package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
)

// APIVersion is the major version of this API (the package berth.agent.v1).
// A breaking change gets a new package, not a new number here.
const APIVersion = 1

// Digest fingerprints the API this binary was built from: a hash of the
// compiled descriptor of agent.proto. The guest agent reports it in Info and
// the host compares it with its own, so a guest image built from any other
// revision of the API (a field or RPC added since) is named as stale at
// connect instead of failing later with an unknown-method or a silently
// missing field. It is computed, not maintained by hand, so nobody has to
// remember to bump it.
var Digest = sync.OnceValue(func() string {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(protodesc.ToFileDescriptorProto(File_agent_proto))
	if err != nil {
		panic(fmt.Sprintf("marshal the agent API descriptor: %v", err))
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
})

// Compatible reports whether an agent that answered Info with r speaks the
// API this binary speaks. The error says what differs and how to fix it.
func Compatible(r *InfoResponse) error {
	if r.GetApiVersion() == APIVersion && r.GetApiDigest() == Digest() {
		return nil
	}
	agent := r.GetApiDigest()
	if agent == "" {
		agent = "none (older than the API check)"
	}
	return fmt.Errorf("the guest agent %s speaks agent API v%d with digest %s, this Berth speaks v%d with digest %s: the guest image is stale",
		r.GetAgentVersion(), r.GetApiVersion(), agent, APIVersion, Digest())
}
