"""User profiles (用户画像): refresh with the champion models, segment tags, explanations."""
