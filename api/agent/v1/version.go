package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
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
//
// It hashes the serialized descriptor protoc-gen-go embeds in agent.pb.go
// (without comments or source positions, so only API changes count)
// rather than re-marshalling it through protodesc: that package and the
// descriptor types it pulls in cost ~80 ms of package initialisation in
// every cold start of the agent under TCG, at every boot (GODEBUG=inittrace
// =1, docs/benchmarks.md). TestDigestCoversTheWholeDescriptor checks that
// the embedded bytes are the whole descriptor.
var Digest = sync.OnceValue(func() string {
	sum := sha256.Sum256([]byte(file_agent_proto_rawDesc))
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
