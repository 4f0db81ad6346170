local out = {}
for i = 1, #KEYS / 3 do
  out[i] = conv_state(KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], ARGV[1],
    ARGV[2 * i], ARGV[2 * i + 1])
end
return out
