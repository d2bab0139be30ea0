package jobspec

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Sealed is authenticated ciphertext (AES-256-GCM) of a JSON value, bound
// to the job id it was sealed for. Its JSON form is a base64 string; the
// zero value means "nothing sealed".
type Sealed []byte

// KeySize is the size of a sealing key in bytes.
const KeySize = 32

// Sealer seals and opens the secret parts of jobs. Create it with NewSealer.
type Sealer struct {
	aead cipher.AEAD
}

// ErrOpen means a sealed value could not be opened: a wrong key, another
// job's value, or tampering.
var ErrOpen = errors.New("opening sealed value: wrong key or corrupted data")

// NewSealer makes a Sealer from a 32-byte key.
func NewSealer(key []byte) (*Sealer, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("sealing key: %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("sealing key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("sealing key: %w", err)
	}
	return &Sealer{aead: aead}, nil
}

// ParseKey decodes a sealing key given as base64 (standard or URL) or as 64
// hex digits, as configuration files and environment variables hold it.
func ParseKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == KeySize {
			return b, nil
		}
	}
	if b, err := hex.DecodeString(s); err == nil && len(b) == KeySize {
		return b, nil
	}
	return nil, fmt.Errorf("sealing key: want %d bytes as base64 or hex", KeySize)
}

// NewKey returns a fresh random key.
func NewKey() []byte {
	k := make([]byte, KeySize)
	_, _ = rand.Read(k) // crypto/rand.Read never fails (Go ≥ 1.24)
	return k
}

// Seal encrypts v (as JSON) for jobID.
func (s *Sealer) Seal(jobID string, v any) (Sealed, error) {
	plain, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("sealing for job %s: %w", jobID, err)
	}
	nonce := make([]byte, s.aead.NonceSize())
	_, _ = rand.Read(nonce)
	return s.aead.Seal(nonce, nonce, plain, []byte(jobID)), nil
}

// Open decrypts a Sealed value made for jobID into v. An empty Sealed
// leaves v unchanged.
func (s *Sealer) Open(jobID string, sealed Sealed, v any) error {
	if len(sealed) == 0 {
		return nil
	}
	n := s.aead.NonceSize()
	if len(sealed) < n+s.aead.Overhead() {
		return ErrOpen
	}
	plain, err := s.aead.Open(nil, sealed[:n], sealed[n:], []byte(jobID))
	if err != nil {
		return ErrOpen
	}
	if err := json.Unmarshal(plain, v); err != nil {
		return fmt.Errorf("opening sealed value of job %s: %w", jobID, err)
	}
	return nil
}
