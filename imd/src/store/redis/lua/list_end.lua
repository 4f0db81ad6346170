return list_end(KEYS[1])
